"""An ELF file's SHA-256 is remembered for the file as it is, never for its path."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest

from aiobpf.collector import elf
from aiobpf.collector.elf import ElfImage


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "python"
    shutil.copy(os.path.realpath(sys.executable), path)
    expected = _sha(path)
    first = ElfImage.open(path)
    assert first.digest == expected
    first.close()

    def no_hashing(*_: object) -> None:
        raise AssertionError("hashed again")

    with monkeypatch.context() as patch:   # the same file: its digest is remembered
        patch.setattr(elf.hashlib, "sha256", no_hashing)
        again = ElfImage.open(path)
        assert again.digest == expected
        again.close()

    with path.open("r+b") as out:   # written to in place: same size, same inode
        out.seek(path.stat().st_size - 1)
        out.write(b"\x01" if out.read(1) != b"\x01" else b"\x02")
    changed = ElfImage.open(path)
    assert changed.digest == _sha(path) != first.digest
    changed.close()
