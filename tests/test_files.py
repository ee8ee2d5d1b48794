import os

import pytest

from imagetext.files import atomic_path, unique_dir


def test_atomic_writes_replace_whole_files_with_usual_permissions(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["file.txt"]
    with atomic_path(target) as temporary:
        temporary.write_text("new")
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unique_dir_never_reuses_a_folder(tmp_path):
    first = unique_dir(tmp_path, "run")
    second = unique_dir(tmp_path, "run")
    assert (first.name, second.name) == ("run", "run-2") and first.is_dir() and second.is_dir()
