"""Image–caption folders in DALLE-pytorch's format: `x.png` beside `x.txt`, one caption per line.

The folder is searched recursively. An image without a caption file is skipped and counted when the
folder is indexed (or captioned by its file name, if asked). An image that cannot be decoded is found
only when it is read; it is then replaced by the next readable image and reported through the
sample's `skipped` list, so an epoch never stops on one bad file and the count reaches the trainer.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from imagetext.images import IMAGE_SUFFIXES, UNREADABLE_IMAGE_ERRORS, ResizeCrop, open_rgb
from imagetext.seeding import keyed_generator

log = logging.getLogger(__name__)
CAPTION_CHOICES = ("random", "first")


def read_captions(path: Path) -> list[str]:
    """The non-empty lines of a caption file (bytes that are not UTF-8 become U+FFFD; `is_utf8` tells)."""
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def stays_inside(path: Path, root: Path) -> bool:
    """Whether `path`, links followed, is inside `root` (a link may point anywhere, /etc/passwd included)."""
    return path.resolve().is_relative_to(root.resolve())


def caption_from_filename(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip()


class ImageCaptionFolder(Dataset):
    """Every image under `root` that has captions, sized to `image_size`×`image_size`.

    caption_choice: "random" picks one caption line per access (training), "first" the first line
    (evaluation). Items: {"image", "caption", "captions" (every line), "path", "skipped"}. The random
    caption and crop of item i are drawn from a generator keyed by (seed, epoch, i): the same in any
    worker, and in a run resumed mid-epoch; `set_epoch` moves to the next epoch's draws.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        random_crop: bool = False,
        caption_choice: str = "random",
        use_filename_captions: bool = False,
        seed: int = 0,
    ):
        self.root = Path(root)
        self.seed, self.epoch = seed, 0
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"image–caption folder {self.root} does not exist; give the folder that holds x.png + x.txt pairs"
            )
        if caption_choice not in CAPTION_CHOICES:
            raise ValueError(f"caption_choice must be one of {CAPTION_CHOICES}, got {caption_choice!r}")
        self.transform = ResizeCrop(image_size, random_crop)
        self.caption_choice = caption_choice
        self.use_filename_captions = use_filename_captions

        found = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        images = [p for p in found if stays_inside(p, self.root)]
        self.n_outside = len(found) - len(images)
        self.items: list[tuple[Path, list[str]]] = []
        self.n_uncaptioned = self.n_not_utf8 = 0
        for image_path in images:
            captions = self._captions_for(image_path)
            if captions:
                self.items.append((image_path, captions))
            else:
                self.n_uncaptioned += 1
        if not self.items:
            raise FileNotFoundError(
                f"no captioned images in {self.root} ({len(images)} images, {self.n_uncaptioned} without a caption): "
                f"put a x.txt beside each x.png, or set use_filename_captions"
            )
        if self.n_outside:
            log.warning("%s: refused %d images that are links to files outside the folder", self.root, self.n_outside)
        if self.n_not_utf8:
            log.warning(
                "%s: %d caption files are not UTF-8; their undecodable bytes read as U+FFFD (re-save them as UTF-8)",
                self.root,
                self.n_not_utf8,
            )
        if self.n_uncaptioned:
            log.warning(
                "%s: skipped %d of %d images that have no caption file (set use_filename_captions to keep them)",
                self.root,
                self.n_uncaptioned,
                len(images),
            )

    def _captions_for(self, image_path: Path) -> list[str]:
        caption_file = image_path.with_suffix(".txt")
        readable = caption_file.is_file() and stays_inside(caption_file, self.root)  # a link out is no caption
        captions = read_captions(caption_file) if readable else []
        if readable and not is_utf8(caption_file):
            self.n_not_utf8 += 1
        if not captions and self.use_filename_captions:
            captions = [caption_from_filename(image_path)]
        return captions

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def select(self, indices: list[int]) -> ImageCaptionFolder:
        """The folder restricted to these items (a split): an unreadable image's stand-in comes from them too."""
        other = copy.copy(self)
        other.items = [self.items[i] for i in indices]
        return other

    def view(self, random_crop: bool, caption_choice: str) -> ImageCaptionFolder:
        """The same indexed files read with other settings (e.g. a validation view without random crops)."""
        other = copy.copy(self)
        other.transform = ResizeCrop(self.transform.size, random_crop)
        other.caption_choice = caption_choice
        return other

    def captions(self, index: int) -> list[str]:
        return list(self.items[index][1])

    def __getitem__(self, index: int) -> dict:
        skipped = []
        for offset in range(len(self.items)):
            position = (index + offset) % len(self.items)
            path, captions = self.items[position]
            generator = keyed_generator(self.seed, self.epoch, position)
            try:
                image = self.transform(open_rgb(path), generator)
            except UNREADABLE_IMAGE_ERRORS as error:
                log.debug("unreadable image %s: %s", path, error)
                skipped.append(str(path))
                continue
            if self.caption_choice == "random":
                caption = captions[int(torch.randint(len(captions), (), generator=generator))]
            else:
                caption = captions[0]
            # Only the drawn index's own failure is reported: its stand-ins are counted when they are drawn.
            return {
                "image": image,
                "caption": caption,
                "captions": list(captions),
                "path": str(path),
                "skipped": skipped[:1],
            }
        raise OSError(f"no image under {self.root} could be read; check the files or the folder path")
