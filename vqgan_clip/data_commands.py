"""`vqgan-clip data …`: write the shapes folder, the emoji folder, or webdataset shards from any of them."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from imagetext.emoji import write_emoji_folder
from imagetext.folder import ImageCaptionFolder
from imagetext.shapes import render, scene_at, write_shapes_folder
from imagetext.shards import ShardRecord
from imagetext.shards import write_shards as write_shard_files


def write_shapes(args: argparse.Namespace) -> None:
    out = write_shapes_folder(args.out, args.n, args.size, args.seed, args.split)
    print(f"wrote {args.n} shapes pairs ({args.split}, {args.size}px) to {out}")


def write_emoji(args: argparse.Namespace) -> None:
    vendors = tuple(v.strip() for v in args.vendors.split(",") if v.strip())
    tarballs = {}
    for item in args.tarball:
        vendor, separator, path = item.partition("=")
        if not separator:
            raise ValueError(
                f"--tarball takes VENDOR=PATH, e.g. twitter=emoji-datasource-twitter-16.0.0.tgz; got {item!r}"
            )
        tarballs[vendor.strip()] = Path(path)
    counts = write_emoji_folder(Path(args.out), vendors=vendors, version=args.version, tarballs=tarballs or None)
    total = sum(counts.values())
    print(f"wrote {total} emoji pairs to {args.out} ({', '.join(f'{v}: {n}' for v, n in counts.items())})")


def _folder_records(root: Path) -> Iterator[ShardRecord]:
    """Each captioned image of a folder, as its original file bytes (no re-encoding)."""
    folder = ImageCaptionFolder(root, image_size=1)  # indexes the files; images are not decoded here
    for path, captions in folder.items:
        key = path.relative_to(root).with_suffix("").as_posix().replace("/", "__").replace(".", "_")
        yield ShardRecord(key, path.read_bytes(), path.suffix.lower().lstrip("."), captions)


def _shapes_records(n: int, image_size: int, seed: int) -> Iterator[ShardRecord]:
    for index in range(n):
        scene = scene_at(seed, index, image_size)
        buffer = io.BytesIO()
        Image.fromarray(render(scene, image_size)).save(buffer, format="PNG")
        yield ShardRecord(f"{index:06d}", buffer.getvalue(), "png", [scene.caption], scene.to_dict())


def write_shards(args: argparse.Namespace) -> None:
    if args.src == "shapes":
        records = _shapes_records(args.n, args.size, args.seed)
        source = f"shapes n={args.n} size={args.size} seed={args.seed}"
    elif Path(args.src).is_dir() and not any(Path(args.src).glob("*.tar")):
        records = _folder_records(Path(args.src))
        source = f"folder {Path(args.src).resolve()}"
    else:
        raise ValueError(
            f"{args.src} is neither 'shapes' nor an image–caption folder; to re-shard shards, read them with the DataModule"
        )
    paths = write_shard_files(records, Path(args.out), args.shard_size, source=source)
    print(f"wrote {len(paths)} shards to {args.out}")
