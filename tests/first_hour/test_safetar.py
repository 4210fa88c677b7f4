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
