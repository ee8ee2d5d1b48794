import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from imagetext.datamodule import DataEpochHooks, collate_image_text
from imagetext.folder import ImageCaptionFolder


def make_image(path, color=(200, 30, 30), size=(20, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pairs"
    make_image(root / "a.png")
    (root / "a.txt").write_text("a red thing\nsomething red\n")
    make_image(root / "sub" / "b.jpg", color=(10, 200, 10))
    (root / "sub" / "b.txt").write_text("a green thing\n")
    make_image(root / "sub" / "deeper" / "c.webp", color=(10, 10, 200))
    (root / "sub" / "deeper" / "c.txt").write_text("a blue thing\n")
    make_image(root / "uncaptioned_cat.png")
    return root


def test_recursive_pairs_sized_and_ranged(folder):
    data = ImageCaptionFolder(folder, image_size=8, caption_choice="first")
    assert len(data) == 3 and data.n_uncaptioned == 1
    captions = {data[i]["caption"] for i in range(3)}
    assert captions == {"a red thing", "a green thing", "a blue thing"}
    item = data[0]
    assert item["image"].shape == (3, 8, 8)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert data.captions(0) == ["a red thing", "something red"]


def test_random_caption_choice_uses_every_line(folder):
    data = ImageCaptionFolder(folder, image_size=8, caption_choice="random")
    index = next(i for i in range(len(data)) if len(data.captions(i)) == 2)
    drawn = set()
    for epoch in range(30):  # one draw per item and epoch
        data.set_epoch(epoch)
        drawn.add(data[index]["caption"])
    assert drawn == {"a red thing", "something red"}


def test_filename_captions_when_asked(folder):
    data = ImageCaptionFolder(folder, image_size=8, use_filename_captions=True)
    assert len(data) == 4 and data.n_uncaptioned == 0
    assert "uncaptioned cat" in {data.captions(i)[0] for i in range(4)}


def test_transparent_images_are_composited_on_white(tmp_path):
    make_image(tmp_path / "t.png", color=(255, 0, 0, 0), mode="RGBA")
    (tmp_path / "t.txt").write_text("nothing\n")
    image = ImageCaptionFolder(tmp_path, image_size=4)[0]["image"]
    assert torch.allclose(image, torch.ones_like(image))


def test_random_crop_keeps_the_size(tmp_path):
    make_image(tmp_path / "wide.png", size=(40, 10))
    (tmp_path / "wide.txt").write_text("wide\n")
    data = ImageCaptionFolder(tmp_path, image_size=8, random_crop=True)
    assert data[0]["image"].shape == (3, 8, 8)


def test_corrupt_and_truncated_images_are_skipped_counted_and_reported_once(folder, caplog):
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "broken.txt").write_text("broken\n")
    good = folder / "a.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[:-30])
    (folder / "truncated.txt").write_text("truncated\n")
    data = ImageCaptionFolder(folder, image_size=8)
    assert len(data) == 5  # decoding is lazy: bad files are found when read

    report = DataEpochHooks()
    loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate_image_text)
    n_images = 0
    for batch in loader:
        n_images += len(batch["image"])
        report.on_train_batch_end(None, None, None, batch, 0)
    assert n_images == 5  # each bad file's slot is filled by the next readable image
    with caplog.at_level(logging.WARNING):
        assert report.report(epoch=0) == 2
    assert sum("skipped 2 unreadable images" in r.message for r in caplog.records) == 1
    assert report.report(epoch=1) == 0  # the count starts again each epoch


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nowhere", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no captioned images"):
        ImageCaptionFolder(tmp_path / "empty", image_size=8)


def test_links_out_of_the_folder_are_refused_and_odd_bytes_are_warned(tmp_path, caplog):
    root, outside = tmp_path / "pairs", tmp_path / "secret"
    make_image(root / "a.png")
    (root / "a.txt").write_text("a red thing\n")
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    make_image(outside / "elsewhere.png")
    make_image(root / "b.png")
    (root / "b.txt").symlink_to(outside / "passwd")  # a caption that is a link out: no caption
    (root / "c.png").symlink_to(outside / "elsewhere.png")  # an image that is a link out: refused
    (root / "c.txt").write_text("linked\n")
    make_image(root / "d.png")
    (root / "d.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "e.txt").write_text("inside")
    make_image(root / "sub" / "e.png")
    (root / "sub" / "e.txt").symlink_to(root / "e.txt")  # a link that stays inside is fine
    with caplog.at_level(logging.WARNING, logger="imagetext.folder"):
        dataset = ImageCaptionFolder(root, image_size=8, caption_choice="first")
    assert sorted(path.name for path, _ in dataset.items) == ["a.png", "d.png", "e.png"]
    assert "root:x" not in str([captions for _, captions in dataset.items])
    assert dataset.captions(1) == ["caf\ufffd au lait"]
    text = caplog.text
    assert "refused 1 images that are links to files outside the folder" in text
    assert "1 caption files are not UTF-8" in text and "skipped 1 of 4 images that have no caption" in text
