"""dm-crypt / LUKS: the cipher and where the key lives, from the LUKS header itself.

The device-mapper uuid (CRYPT-LUKS2-..., CRYPT-LUKS1-..., CRYPT-PLAIN-...)
proves a dm-crypt layer; the header on the device below it names the cipher
and its key slots and tokens (TPM2, FIDO2, Clevis).  Reading the header needs
no tool; `cryptsetup status` is the fallback when the header is unreadable.
"""

from __future__ import annotations

import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ebk.preflight.blockdev import BlockDevice
from ebk.preflight.commands import Runner, run_command
from ebk.preflight.model import Evidence, Status

LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS1_ACTIVE = 0x00AC71F3
MAX_LUKS2_JSON = 4 * 1024 * 1024

TOKEN_NAMES = {
    "systemd-tpm2": "TPM2 (systemd-cryptenroll)",
    "systemd-fido2": "FIDO2 security key (systemd-cryptenroll)",
    "systemd-pkcs11": "PKCS#11 token (systemd-cryptenroll)",
    "systemd-recovery": "recovery key",
    "clevis": "Clevis (Tang server or TPM)",
    "luks2-keyring": "kernel keyring",
}


@dataclass(frozen=True)
class LuksHeader:
    version: int
    uuid: str
    cipher: str
    key_bits: int
    keyslots: int
    tokens: tuple[str, ...]

    def key_location(self) -> str:
        where = [TOKEN_NAMES.get(t, f"token {t}") for t in self.tokens]
        where.append(
            f"{self.keyslots} passphrase/key-file slot(s) in the LUKS{self.version} header"
        )
        return "; ".join(where)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def parse_luks_header(head: bytes, json_area: bytes | None = None) -> LuksHeader:
    """Parse LUKS1 (binary) or LUKS2 (binary + JSON area) headers."""
    if head[:6] != LUKS_MAGIC:
        raise ValueError("no LUKS magic")
    version = struct.unpack(">H", head[6:8])[0]
    if version == 1:
        cipher = f"{_cstr(head[8:40])}-{_cstr(head[40:72])}"
        key_bytes = struct.unpack(">I", head[108:112])[0]
        active = sum(
            1
            for i in range(8)
            if struct.unpack(">I", head[208 + 48 * i : 212 + 48 * i])[0] == LUKS1_ACTIVE
        )
        return LuksHeader(1, _cstr(head[168:208]), cipher, key_bytes * 8, active, ())
    if version == 2:
        if json_area is None:
            raise ValueError("LUKS2 header without its JSON area")
        meta = json.loads(json_area.split(b"\0", 1)[0])
        segments = meta.get("segments", {})
        crypt = [s for s in segments.values() if s.get("type") == "crypt"]
        cipher = crypt[0].get("encryption", "") if crypt else ""
        keyslots = meta.get("keyslots", {})
        key_bits = max((int(k.get("key_size", 0)) * 8 for k in keyslots.values()), default=0)
        tokens = tuple(sorted({str(t.get("type", "?")) for t in meta.get("tokens", {}).values()}))
        return LuksHeader(2, _cstr(head[168:208]), cipher, key_bits, len(keyslots), tokens)
    raise ValueError(f"unsupported LUKS version {version}")


def read_luks_header(device: Path) -> LuksHeader:
    with device.open("rb") as fh:
        head = fh.read(4096)
        if head[:6] != LUKS_MAGIC:
            raise ValueError(f"{device} has no LUKS header")
        json_area = None
        if struct.unpack(">H", head[6:8])[0] == 2:
            hdr_size = struct.unpack(">Q", head[8:16])[0]
            json_area = fh.read(min(max(hdr_size - 4096, 0), MAX_LUKS2_JSON))
    return parse_luks_header(head, json_area)


def parse_cryptsetup_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def crypt_evidence(dev: BlockDevice, dev_root: Path, run: Runner = run_command) -> Evidence:
    """Evidence for one dm-crypt device (its uuid already says CRYPT-...)."""
    kind = dev.crypt_type or "?"
    layer = f"dm-crypt/{kind}" if kind.startswith("LUKS") else f"dm-crypt ({kind})"
    header: LuksHeader | None = None
    problems: list[str] = []
    if kind.startswith("LUKS"):
        for child in dev.children:
            try:
                header = read_luks_header(dev_root / child.name)
                break
            except (OSError, ValueError) as exc:
                problems.append(str(exc))
    cipher, key_bits, key_location = "", 0, ""
    if header is not None:
        cipher, key_bits, key_location = header.cipher, header.key_bits, header.key_location()
    elif dev.dm_name:
        try:
            status = parse_cryptsetup_status(run(["cryptsetup", "status", dev.dm_name]))
            cipher = status.get("cipher", "")
            key_bits = int(status.get("keysize", "0 bits").split()[0] or 0)
            key_location = status.get("key location", "")
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            problems.append(str(exc))
    if not key_location:
        key_location = (
            "supplied when the device is opened (no on-disk header)"
            if kind == "PLAIN"
            else "not readable here"
        )
    if "cipher_null" in cipher:
        return Evidence(
            Status.UNENCRYPTED,
            layer,
            f"{dev.name} uses cipher_null: the mapping does not encrypt",
            cipher,
        )
    detail = f"{dev.name} ({dev.dm_name}) is a {kind} dm-crypt mapping"
    if cipher:
        detail += f", {cipher}" + (f" with a {key_bits}-bit key" if key_bits else "")
    elif problems:
        detail += f" (cipher not readable: {problems[0]})"
    return Evidence(Status.ENCRYPTED, layer, detail, cipher, key_location)
