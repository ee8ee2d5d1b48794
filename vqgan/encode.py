"""Encoding a dataset once into code shards for the GPT prior (what `vqgan-clip encode` runs).

    manifest = encode_dataset(model, "vqgan.safetensors", data_module, "runs/codes/shapes")

Each split's images are encoded in order into shards of `shard_size` code grids with their captions
(imagetext.code_shards), then a manifest names the VQGAN (path and sha256), the grid, the codebook
size and the shards. An interrupted run resumes: complete shards on disk are kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from imagetext.code_shards import read_code_shard, shard_path, write_code_shard, write_manifest
from imagetext.datamodule import ImageTextDataModule, collate_image_text
from imagetext.files import file_sha256
from imagetext.progress import ProgressBar
from vqgan.model import VQGAN


def encode_dataset(
    model: VQGAN,
    vqgan_file: str | Path,
    data: ImageTextDataModule,
    out: str | Path,
    *,
    data_name: str,
    image_size: int,
    shard_size: int,
    batch_size: int,
    num_workers: int = 0,
    bf16: bool = False,
) -> dict:
    """Encode `data`'s train and val sets into `out` and write its manifest; the manifest's contents."""
    out = Path(out)
    splits = {}
    for split, dataset in (("train", data.train_set), ("val", data.val_set)):
        shards, left_out = encode_split(model, dataset, out, split, shard_size, batch_size, num_workers, bf16)
        splits[split] = {"n": sum(s["n"] for s in shards), "left_out": left_out, "shards": shards}
    manifest = {
        "vqgan": str(Path(vqgan_file).resolve()),
        "vqgan_sha256": file_sha256(vqgan_file),
        "codebook_size": model.codebook_size,
        "grid": list(model.code_grid_shape(image_size, image_size)),
        "image_size": image_size,
        "data": data_name,
        "splits": splits,
    }
    write_manifest(out, manifest)
    return manifest


def collate_marking_stand_ins(samples: list[dict]) -> dict:
    """`collate_image_text`, and per item whether it stands in for an unreadable image (an indexed
    dataset hands the next readable image in its place, and names the unreadable one in `skipped`)."""
    batch = collate_image_text(samples)
    batch["stand_in"] = [bool(sample.get("skipped")) for sample in samples]
    return batch


def encode_split(
    model, dataset: Dataset, out: Path, split: str, shard_size: int, batch_size: int, num_workers: int, bf16: bool
) -> tuple[list[dict], int]:
    """Encode `dataset` in order into shards of `shard_size` items; the shards, and how many unreadable
    images were left out (a shard holds fewer grids by as many).

    Resume: complete shards already on disk are kept and their items skipped (an iterable dataset,
    which cannot skip, is encoded again from its start).
    """
    device = next(model.parameters()).device
    iterable = isinstance(dataset, IterableDataset)  # a shard stream skips unreadable samples itself
    done = 0
    while not iterable and shard_path(out, split, done).is_file() and (done + 1) * shard_size <= len(dataset):
        done += 1
    shards = [
        {
            "file": shard_path(out, split, i).relative_to(out).as_posix(),
            "n": len(read_code_shard(shard_path(out, split, i))[1]),
        }
        for i in range(done)
    ]
    source = dataset if iterable else Subset(dataset, range(done * shard_size, len(dataset)))
    pending: list[tuple[torch.Tensor, list[str]] | None] = []  # one entry per item; None: left out
    left_out = 0

    def flush(n: int) -> None:
        kept = [entry for entry in pending[:n] if entry is not None]
        if kept:
            codes, captions = torch.stack([code for code, _ in kept]), [caption for _, caption in kept]
            path = write_code_shard(shard_path(out, split, len(shards)), codes, captions)
            shards.append({"file": path.relative_to(out).as_posix(), "n": len(kept)})
        del pending[:n]

    loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_marking_stand_ins)
    with ProgressBar(
        total=None if iterable else len(dataset), initial=done * shard_size, desc=f"encode {split}", unit="img"
    ) as bar:
        for batch in loader:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                codes = list(model.encode_codes(batch["image"].to(device)).cpu())
            captions = batch["captions"] if "captions" in batch else [[c] for c in batch["caption"]]
            stand_ins = [False] * len(codes) if iterable else batch["stand_in"]
            left_out += sum(stand_ins) + (len(batch["skipped"]) if iterable else 0)
            pending += [None if stand_in else entry for entry, stand_in in zip(zip(codes, captions), stand_ins)]
            while len(pending) >= shard_size:
                flush(shard_size)
            bar.update(len(codes))
    if pending:
        flush(len(pending))
    return shards, left_out
