import hashlib
import os

import pytest
import torch

from imagetext.files import atomic_path, file_sha256, safe_name, unique_dir
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
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unique_dir_never_reuses_a_folder(tmp_path):
    first = unique_dir(tmp_path, "run")
    second = unique_dir(tmp_path, "run")
    assert (first.name, second.name) == ("run", "run-2") and first.is_dir() and second.is_dir()


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
