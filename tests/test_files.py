import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from imagetext.files import atomic_path, file_sha256, partial_dir, publish_dir, safe_name
from imagetext.images import open_rgb, pil_to_tensor, read_png_text, save_png


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
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == usual_mode(0o666)


def usual_mode(kind: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return kind & ~mask


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_safetensors_file_written_atomically_keeps_the_usual_permissions(tmp_path):
    with atomic_path(tmp_path / "w.safetensors") as temporary:
        save_file({"w": torch.zeros(2)}, str(temporary))  # the writer itself makes the file 0600
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == usual_mode(0o666)


def test_an_output_folder_appears_complete_under_a_free_name_or_not_at_all(tmp_path):
    with partial_dir(tmp_path, "run") as work:
        (work / "a.png").write_text("x")
        first = publish_dir(work, tmp_path, "run")
    (tmp_path / "run-2").mkdir()
    (tmp_path / "run-2" / "theirs").write_text("taken")
    with partial_dir(tmp_path, "run") as work:
        second = publish_dir(work, tmp_path, "run")
    assert (first.name, second.name) == ("run", "run-3") and (first / "a.png").read_text() == "x"
    assert first.stat().st_mode & 0o777 == usual_mode(0o777)
    with pytest.raises(KeyboardInterrupt):
        with partial_dir(tmp_path, "run") as work:
            (work / "half.png").write_text("x")
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["run", "run-2", "run-3"]


def test_leftovers_of_a_killed_run_are_removed_and_a_live_runs_are_kept(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    for pid in (dead, alive):
        (tmp_path / f".run.partial-{pid}-abc123").mkdir()
        (tmp_path / f".out.json.{pid}.x1y2z3.tmp").write_text("half")
    (tmp_path / ".run.partial-notapid").mkdir()
    with partial_dir(tmp_path, "run") as work, atomic_path(tmp_path / "out.json") as temporary:
        temporary.write_text("{}")
        publish_dir(work, tmp_path, "run")
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(
        [".run.partial-notapid", f".run.partial-{alive}-abc123", f".out.json.{alive}.x1y2z3.tmp", "out.json", "run"]
    )


def test_safe_name_keeps_letters_and_digits_only():
    assert safe_name("A small RED circle: 1|a blue/square") == "a-small-red-circle-1-a-blue-square"
    assert safe_name("../../etc") == "etc" and safe_name("?!") == "untitled"
    assert safe_name("word " * 30, max_length=20) == "word-word-word-word"


def test_png_metadata_travels_in_text_chunks(tmp_path):
    image = torch.linspace(-1, 1, 3 * 4 * 5).reshape(3, 4, 5)
    path = save_png(image, tmp_path / "image.png", {"prompt": "a red circle", "seed": 7, "settings": {"cfg": 3.0}})
    assert read_png_text(path) == {"prompt": "a red circle", "seed": "7", "settings": '{"cfg": 3.0}'}
    assert torch.allclose(pil_to_tensor(open_rgb(path)), image, atol=1 / 127.5)


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    with monkeypatch.context() as patch:
        patch.setattr("builtins.open", lambda *args, **kwargs: pytest.fail("the file was read again"))
        assert file_sha256(str(path)) == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    stat = path.stat()
    path.write_bytes(b"b" * 3_000_000)  # same size; a rewrite moves the modification time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert file_sha256(path) == hashlib.sha256(b"b" * 3_000_000).hexdigest()
