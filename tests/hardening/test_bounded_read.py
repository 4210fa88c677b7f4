"""Finding 7, the reading seam (issue 10): a planted huge document costs at most its cap.

A 3 GiB sparse `manifest.json` in a real local repository (the attack from
the issue): read_capped refuses it after reading cap + 1 bytes, from the
listed size alone or, if the listing lies, from the stream.
"""

from __future__ import annotations

import io
import resource
from pathlib import Path
from typing import BinaryIO

import pytest

from ebk.bounded import check_listed_size, read_capped
from ebk.errors import IntegrityError
from ebk.storage.local import LocalStorage

CAP = 4 * 1024 * 1024


class CountingReader:
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size) or b""
        self.consumed += len(data)
        return data


def _planted(tmp_path: Path) -> tuple[LocalStorage, str]:
    root = tmp_path / "repo"
    (root / "backups" / "20990101T000000Z-aaaaaa").mkdir(parents=True)
    name = "backups/20990101T000000Z-aaaaaa/manifest.json"
    with open(root / name, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB listed, nothing on disk
    return LocalStorage(root), name


def test_listed_size_refuses_before_reading(tmp_path: Path) -> None:
    storage, name = _planted(tmp_path)
    info = next(i for i in storage.list("backups/") if i.name == name)
    with pytest.raises(IntegrityError, match="more than the 4194304 bytes"):
        check_listed_size(info.size, CAP, f"manifest {name}")


def test_stream_is_cut_at_cap_plus_one_when_the_listing_lies(tmp_path: Path) -> None:
    storage, name = _planted(tmp_path)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = CountingReader(storage.open_read(name))
    with pytest.raises(IntegrityError, match=f"manifest {name} is more than"):
        read_capped(source, CAP, f"manifest {name}", listed_size=10)  # the listing said 10
    assert source.consumed == CAP + 1
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 64 * 1024  # far below the 3 GiB the file claims


@pytest.mark.parametrize("size", [0, 1, CAP - 1, CAP])
def test_documents_up_to_the_cap_are_returned_whole(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert read_capped(io.BytesIO(data), CAP, "doc", listed_size=size) == data


def test_one_byte_over_is_refused() -> None:
    with pytest.raises(IntegrityError) as info:
        read_capped(io.BytesIO(bytes(CAP + 1)), CAP, "key object backups/x/key.json")
    assert info.value.exit_code == 5
    assert "key object backups/x/key.json" in info.value.message
