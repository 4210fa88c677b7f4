"""ebk.safetar refuses every member a PostgreSQL archive never has, without relying on
tarfile's filter="data" (bypassable before Python 3.11.13)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ebk.errors import IntegrityError
from ebk.safetar import check_member


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "name", ["base/1/1259", "global/pg_filenode.map", "PG_VERSION", "./base/1/1259"]
)
def test_plain_files_and_directories_pass(tmp_path: Path, name: str) -> None:
    check_member(member(name), tmp_path)
    check_member(member("base/1", tarfile.DIRTYPE), tmp_path)


@pytest.mark.parametrize(
    ("info", "said"),
    [
        (member("/etc/cron.d/x"), "outside the target"),
        (member("../outside"), "outside the target"),
        (member("base/../../outside"), "outside the target"),
        (member("base/evil", tarfile.SYMTYPE, "/etc/shadow"), "symbolic link"),
        (member("base/evil", tarfile.LNKTYPE, "/etc/shadow"), "hard link"),
        (member("dev", tarfile.CHRTYPE), "device or fifo"),
        (member("disk", tarfile.BLKTYPE), "device or fifo"),
        (member("pipe", tarfile.FIFOTYPE), "device or fifo"),
        (member("a\\..\\..\\x"), "invalid name"),
        (member("a\0b"), "invalid name"),
    ],
)
def test_escapes_links_and_devices_are_refused(
    tmp_path: Path, info: tarfile.TarInfo, said: str
) -> None:
    with pytest.raises(IntegrityError) as caught:
        check_member(info, tmp_path)
    assert said in caught.value.message and caught.value.exit_code == 5


def test_a_link_already_on_disk_cannot_be_written_through(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "pg_tblspc").mkdir()
    os.symlink(outside, dest / "pg_tblspc" / "16384")
    with pytest.raises(IntegrityError, match="through a link"):
        check_member(member("pg_tblspc/16384/PG_15/1/1234"), dest)


def test_a_real_archive_round_trip(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"x" * 10
        info = tarfile.TarInfo("base/1/1259")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        archive.addfile(member("base/1/evil", tarfile.SYMTYPE, "../../../../etc"))
    buffer.seek(0)
    refused = []
    with tarfile.open(fileobj=buffer, mode="r") as archive:
        for info in archive:
            try:
                check_member(info, tmp_path)
            except IntegrityError:
                refused.append(info.name)
    assert refused == ["base/1/evil"]


@pytest.mark.parametrize("with_filter", [True, False], ids=["stdlib-filter", "python-3.11.2"])
def test_extraction_drops_set_id_bits_and_the_archive_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_filter: bool
) -> None:
    """Debian bookworm's Python 3.11.2 (the container image) has no extraction filters:
    extract_member gives the same result by hand (a physical restore in the image used to
    fail with "unexpected keyword argument 'filter'")."""
    from ebk.safetar import extract_member

    if not with_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, mode in (("base/1/1259", 0o6777), ("PG_VERSION", 0o640)):
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.uname, info.gname = mode, 4242, 4242, "pg", "pg"
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    data.seek(0)
    with tarfile.open(fileobj=data, mode="r") as reader:
        for m in reader:
            check_member(m, tmp_path)
            extract_member(reader, m, tmp_path)
    first, version = tmp_path / "base/1/1259", tmp_path / "PG_VERSION"
    assert first.read_bytes() == b"abc" and version.read_bytes() == b"abc"
    assert first.stat().st_mode & 0o7777 == 0o755  # no set-id, sticky or group/other write
    assert version.stat().st_mode & 0o7777 == 0o640
    assert first.stat().st_uid == os.getuid() and version.stat().st_gid == os.getgid()
