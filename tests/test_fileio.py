"""`fileio.atomic_write`: whole files, with the permissions a plain write would give."""

from __future__ import annotations

import os

import pytest

from covidzoo.fileio import atomic_write, atomic_write_text


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    assert written.read_text() == "x"
    assert oct(written.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    def fail(tmp: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "out.json", fail)
    assert os.listdir(tmp_path) == []


def test_an_output_that_is_a_folder_is_named_not_the_temporary(tmp_path):
    folder = tmp_path / "roc.png"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        atomic_write_text(folder, "x")
    assert caught.value.filename == str(folder)
    assert os.listdir(tmp_path) == ["roc.png"]
