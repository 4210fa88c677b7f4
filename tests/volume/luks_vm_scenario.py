"""The LUKS2 `ebk volume` scenario, run INSIDE the virtme-ng guest as root by
tests/volume/test_luks_volume_vm.py (one boot; ebk runs in-process through click's
runner, since every Python start costs seconds under TCG emulation).

    python -m tests.volume.luks_vm_scenario RESULT.json

Each step appends {"step", "rc", "out"} to RESULT.json (rewritten after every step,
so a crash still shows how far it got).  Nothing here asserts: the test does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from ebk.cli import main
from ebk.keys.keyfile import KeyFileProvider, create_key_file
from ebk.volume import luks
from ebk.volume.keyobject import KeyObject

WORK = Path("/run/ebk-volume")
MNT = Path("/run/ebk-volume-mnt")
SOCK = Path("/run/ebk-volume-sock")
PG_BIN = Path(os.environ.get("EBK_PG_BIN", "/usr/lib/postgresql/15/bin"))
MARKER = "ebk-luks-marker-51c2"


class Steps:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps: list[dict[str, Any]] = []

    def add(self, step: str, rc: int, out: str) -> None:
        self.steps.append({"step": step, "rc": rc, "out": out[-3000:]})
        self.out.write_text(json.dumps(self.steps, indent=1))

    def ebk(self, step: str, config: Path, *args: str) -> int:
        res = CliRunner().invoke(main, ["--config", str(config), *args])
        out = res.output + ("" if res.exception is None or res.exit_code in range(1, 131)
                            else f"\nEXCEPTION {res.exception!r}")  # fmt: skip
        self.add(step, res.exit_code, out)
        return res.exit_code

    def sh(self, step: str, *argv: str, user: str | None = None) -> int:
        cmd = ["runuser", "-u", user, "--", *argv] if user else list(argv)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/")
        self.add(step, proc.returncode, proc.stdout + proc.stderr)
        return proc.returncode


def psql(steps: Steps, step: str, sql: str) -> int:
    argv = [str(PG_BIN / "psql"), "-X", "-Atq", "-h", str(SOCK), "-U", "postgres", "-c", sql]
    return steps.sh(step, *argv, user="postgres")


def pg(steps: Steps, step: str, action: str) -> int:
    data = MNT / "pgdata"
    opts = f"-k {SOCK} -c listen_addresses='' -c fsync=off"
    argv = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(SOCK / "pg.log"), "-w",
            "-t", "120", "-o", opts, "-m", "fast", action]  # fmt: skip
    return steps.sh(step, *argv, user="postgres")


def key_opens(obj_path: Path, device: Path, keyfile: Path) -> bool:
    obj = KeyObject.parse(obj_path.read_bytes(), obj_path)
    with obj.unwrap(KeyFileProvider(keyfile), vtype="luks2", uuid=obj.uuid) as key:
        return luks.key_opens(device, key)


def run(out: Path) -> None:
    steps = Steps(out)
    for mod in ("loop", "dm_mod", "dm_crypt"):
        steps.sh(f"modprobe {mod}", "modprobe", mod)
    WORK.mkdir(mode=0o700, exist_ok=True)
    steps.sh("tmpfs", "mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "ebkvol", str(WORK))
    for d in (MNT, SOCK):
        d.mkdir(exist_ok=True)
    shutil.chown(SOCK, "postgres", "postgres")
    image, plain_image = WORK / "disk.img", WORK / "plain.img"
    for img in (image, plain_image):
        with img.open("wb") as fh:
            fh.truncate(96 * 1024 * 1024)
    loops = []
    for img in (image, plain_image):
        proc = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True,
                              text=True, check=True)  # fmt: skip
        loops.append(proc.stdout.strip())
    device, plain = Path(loops[0]), Path(loops[1])
    keyfile = WORK / "keys" / "kek.json"
    create_key_file(keyfile)
    config = WORK / "ebk.toml"
    config.write_text(
        f'[keys]\nprovider = "keyfile"\nkeyfile = "{keyfile}"\n\n'
        f'[volume]\nkey_dir = "{WORK / "volumes"}"\n\n[log]\nformat = "json"\nlevel = "warning"\n'
    )
    steps.add("devices", 0, json.dumps({"device": str(device), "plain": str(plain)}))

    if steps.ebk(
        "init", config, "volume", "init", "--type", "luks", str(device), "--name", "pgdata"
    ):
        return
    mapper = Path("/dev/mapper/ebk-pgdata")
    steps.add("mapper after init", int(not mapper.exists()), str(mapper))
    steps.sh("mkfs", "mkfs.ext4", "-q", "-F", str(mapper))
    steps.sh("mount", "mount", str(mapper), str(MNT))
    (MNT / "pgdata").mkdir(mode=0o700)
    shutil.chown(MNT / "pgdata", "postgres", "postgres")
    initdb = [str(PG_BIN / "initdb"), "-D", str(MNT / "pgdata"), "-A", "trust", "-U", "postgres"]
    steps.sh("initdb", *initdb, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", user="postgres")
    pg(steps, "pg start", "start")
    psql(steps, "write", f"CREATE TABLE marker (t text); INSERT INTO marker SELECT '{MARKER}-' "
         "|| g FROM generate_series(1, 500) g; CHECKPOINT")  # fmt: skip
    steps.ebk("lock while mounted", config, "volume", "lock", str(device))
    psql(steps, "still readable", "SELECT count(*) FROM marker")
    pg(steps, "pg stop", "stop")
    steps.sh("umount", "umount", str(MNT))
    steps.ebk("lock", config, "volume", "lock", str(device))
    steps.add("mapper after lock", int(mapper.exists()), str(mapper))
    steps.ebk("status locked", config, "volume", "status", str(device), "--json")
    subprocess.run(["sync"], check=False)
    steps.add("raw scan", int(MARKER.encode() in image.read_bytes()), "marker found" if
              MARKER.encode() in image.read_bytes() else "no marker in the image")  # fmt: skip

    steps.ebk("unlock", config, "volume", "unlock", str(device))
    steps.ebk("unlock again", config, "volume", "unlock", str(device))
    steps.sh("mount 2", "mount", str(mapper), str(MNT))
    pg(steps, "pg start 2", "start")
    psql(steps, "intact", "SELECT count(*) FROM marker")
    pg(steps, "pg stop 2", "stop")
    steps.sh("umount 2", "umount", str(MNT))

    # Rotation: keep the old object to prove afterwards that its key no longer opens.
    obj_path = next((WORK / "volumes").glob("luks2-*.json"))
    old_obj = WORK / "old-object.json"
    shutil.copyfile(obj_path, old_obj)
    steps.ebk("rotate", config, "volume", "rotate", str(device))
    # rc 0 = as it should be: the old key is refused, the new one opens the device.
    steps.add("old key refused", int(key_opens(old_obj, device, keyfile)), "")
    steps.add("new key opens", int(not key_opens(obj_path, device, keyfile)), "")
    steps.sh("luksDump", "cryptsetup", "luksDump", "--dump-json-metadata", str(device))
    steps.ebk("lock 3", config, "volume", "lock", str(device))
    steps.ebk("unlock 3", config, "volume", "unlock", str(device))
    steps.sh("mount 3", "mount", str(mapper), str(MNT))
    pg(steps, "pg start 3", "start")
    psql(steps, "intact after rotate", "SELECT count(*) FROM marker")
    pg(steps, "pg stop 3", "stop")
    steps.sh("umount 3", "umount", str(MNT))
    steps.ebk("lock 4", config, "volume", "lock", str(device))

    # Refusals: a plain device is not an encrypted volume; a LUKS device is not re-formatted.
    steps.ebk("unlock plain", config, "volume", "unlock", str(plain))
    steps.ebk("init again", config, "volume", "init", "--type", "luks", str(device))
    shutil.copyfile(old_obj, obj_path)  # the pre-rotation object: its keyslot is gone
    steps.ebk("unlock with old object", config, "volume", "unlock", str(device))
    steps.add("mapper after refusals", int(mapper.exists()), str(mapper))


if __name__ == "__main__":
    run(Path(sys.argv[1]))
