"""The GPT prior's training data: code shards from `vqgan-clip tokenize`, as (codes, caption) batches.

A code-shard folder is small (int16 codes: an 8×8 grid is 128 bytes, so 100 000 images take 13 MB,
plus their captions), so each split is read into memory once and served from there: no file reads
while training, and any item can be looked up directly, which the seeded shuffle needs.

Batches: {"codes": LongTensor [B, h, w], "caption": list[str]}. A training item's caption is one of
its caption lines, drawn anew each epoch from a generator keyed by (seed, epoch, index), so a resumed
run sees the same lines; a validation item always uses its first line.

The training order is `EpochShuffle`, a function of (seed, epoch). Under DDP each rank reads its own
disjoint slice of every epoch's order: for in-memory (map-style) data that is what splitting the
shards by rank amounts to.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from imagetext.code_shards import read_code_shard, read_manifest
from imagetext.datamodule import EpochShuffle, resumable_shuffle
from imagetext.seeding import keyed_generator


def read_split(codes_folder: str | Path, split: str) -> tuple[torch.Tensor, list[list[str]]]:
    """All of one split of a code-shard folder: codes int16 [N, h, w] and each item's caption lines."""
    manifest = read_manifest(codes_folder)
    if split not in manifest["splits"]:
        raise ValueError(
            f"{codes_folder} has no {split!r} split (it has {sorted(manifest['splits'])}); re-run `vqgan-clip tokenize`"
        )
    parts, captions = [], []
    for shard in manifest["splits"][split]["shards"]:
        shard_codes, shard_captions = read_code_shard(Path(codes_folder) / shard["file"])
        parts.append(shard_codes.to(torch.int16))  # int16 as on disk: a quarter of the memory of int64
        captions += shard_captions
    if not parts:
        raise ValueError(f"the {split} split of {codes_folder} is empty; tokenize a dataset with {split} images")
    return torch.cat(parts), captions


class CodeShardDataset(Dataset):
    """One split of a code-shard folder in memory; items {"codes": LongTensor [h, w], "caption": str}.

    `random_caption=True` draws one of an item's caption lines with a generator keyed by
    (seed, epoch, index); `set_epoch` moves to the next epoch's draws. Otherwise the first line is used.
    """

    def __init__(self, codes_folder: str | Path, split: str, random_caption: bool, seed: int = 0):
        self.codes, self.captions = read_split(codes_folder, split)
        self.random_caption, self.seed, self.epoch = random_caption, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict:
        lines = self.captions[index]
        line = 0
        if self.random_caption and len(lines) > 1:
            line = int(torch.randint(len(lines), (), generator=keyed_generator(self.seed, self.epoch, index)))
        return {"codes": self.codes[index].long(), "caption": lines[line]}


class CodeShardDataModule(pl.LightningDataModule):
    """Train and val batches from a `vqgan-clip tokenize` output folder.

    Args:
        codes: the folder holding `manifest.json` and the train/ and val/ shards.
        batch_size: items per batch (per rank under DDP).
        num_workers: DataLoader worker processes (0 reads in the main process; the data is in memory).
        seed: the shuffle and the caption draws are functions of (seed, epoch), for exact resume.
    """

    def __init__(self, codes: str, batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        read_manifest(codes)  # a missing or unfinished folder fails now, with its one-line message
        self.train_set: CodeShardDataset | None = None
        self.val_set: CodeShardDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        self.train_set = CodeShardDataset(h.codes, "train", random_caption=True, seed=h.seed)
        self.val_set = CodeShardDataset(h.codes, "val", random_caption=False)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = resumable_shuffle(len(self.train_set), self.hparams.seed, self.hparams.batch_size, self.trainer)
        self.train_set.set_epoch(sampler.epoch)  # its caption draws follow the epoch too
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, sampler=None)

    def _loader(self, dataset: CodeShardDataset, sampler: EpochShuffle | None) -> DataLoader:
        # Workers are not kept between epochs: new ones copy the dataset with its new epoch number.
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, sampler=sampler, num_workers=self.hparams.num_workers
        )
