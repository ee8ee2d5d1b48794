"""One LightningDataModule for every stage: shapes made on the fly, a caption folder, or webdataset shards.

Every stage's YAML names it under `data:`, e.g.

    data:
      source: shapes        # shapes | folder | wds
      image_size: 32
      batch_size: 64

Batches are dicts: "image" [B,3,S,S] in [-1,1], "caption" list[str], "skipped" list of unreadable
sources passed over while the batch was made, plus per-item extras as lists ("labels", "path", "key").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from imagetext.configs import resolve_config
from imagetext.folder import ImageCaptionFolder
from imagetext.seeding import keyed_generator
from imagetext.shapes import ShapesDataset
from imagetext.shards import ShardDataset, expand_shard_spec

log = logging.getLogger(__name__)


def collate_image_text(samples: list[dict]) -> dict:
    """Stack images, keep captions and other per-item values as lists, and pool the skipped sources."""
    batch = {"image": default_collate([s["image"] for s in samples]), "skipped": []}
    for sample in samples:
        batch["skipped"].extend(sample.get("skipped", ()))
    for key in samples[0]:
        if key not in batch:
            batch[key] = [s[key] for s in samples]
    return batch


class EpochShuffle(DistributedSampler):
    """A shuffle that is a function of (seed, epoch) alone, so a resumed run sees the same order, split
    between the ranks of a DDP run.

    torch's RandomSampler draws from the global generator, whose state a checkpoint does not keep.
    Rank r of `world_size` takes every world_size-th index of the epoch's order from r on, and the last
    `n % world_size` indices of the order are left out, so no item is read twice in an epoch and every
    rank gets as many batches (torch's DistributedSampler pads with repeats instead). Being a
    DistributedSampler, Lightning uses it as it is under DDP and calls `set_epoch` on it. `skip` passes
    over that many of this rank's indices of the current epoch: a run resumed mid-epoch goes on where it
    stopped. Its length stays the rank's whole epoch, which Lightning counts the resumed epoch against.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, skip: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False, seed=seed, drop_last=True)
        self.n, self.epoch, self.skip = n, epoch, skip

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a new epoch is drawn whole
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = keyed_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=generator)[: self.total_size]
        return iter(order[self.rank :: self.num_replicas][self.skip :].tolist())


def epoch_progress(trainer: pl.Trainer | None) -> tuple[int, int]:
    """(the trainer's epoch, the training batches this process has done in it), for a `train_dataloader`.

    Both come from the fit loop's own progress, restored from the checkpoint before the loaders are
    made, so a run resumed mid-epoch sees where it stopped (a checkpoint saved after a training batch
    counts it as processed). Lightning sets samplers' epochs itself, but on resume it starts the first
    epoch's workers before that (Lightning issue #21938): set from here, they read the resumed epoch.
    """
    if trainer is None:
        return 0, 0
    epochs = trainer.fit_loop.epoch_progress.total
    if epochs.processed == epochs.started:  # not inside an epoch (a fresh run, or one saved at an epoch's end)
        return trainer.current_epoch, 0
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


def resumable_shuffle(n: int, seed: int, batch_size: int, trainer: pl.Trainer | None) -> EpochShuffle:
    """An EpochShuffle for this rank at the trainer's epoch and, for a run resumed mid-epoch, past the
    batches that epoch has done (`epoch_progress`), for a `train_dataloader` to use."""
    epoch, done = epoch_progress(trainer)
    rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return EpochShuffle(n, seed, epoch, done * batch_size, rank, world_size)


class DataEpochHooks(pl.Callback):
    """Per-epoch duties of the data that Lightning does not do itself.

    Tells the training set the epoch (Lightning only tells samplers; shards are shuffled per epoch,
    a folder's captions and crops are drawn per epoch), and says once per epoch how many unreadable
    images the loaders passed over, instead of once per file.
    """

    def __init__(self):
        self.skipped: list[str] = []

    def on_train_epoch_start(self, trainer, pl_module):
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.skipped.extend(batch.get("skipped", ()))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.skipped.extend(batch.get("skipped", ()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.report(trainer.current_epoch)

    def report(self, epoch: int) -> int:
        count = len(self.skipped)
        if count:
            log.warning("epoch %d: skipped %d unreadable images (first: %s)", epoch, count, self.skipped[0])
        self.skipped = []
        return count


class ImageTextDataModule(pl.LightningDataModule):
    """Image–caption data for any stage.

    source="shapes": `n_train` + `n_val` images generated on the fly (val = the next indices of the
    same seeded set; `shapes_split="novel"` gives the held-out compositions).
    source="folder": an image–caption folder at `path`; a seeded permutation sets aside
    `val_fraction` of it for validation.
    source="wds": webdataset shards at `path` (files, folder or brace pattern); validation reads
    `val_path`, or the last shard when none is given. Shards are split by rank and worker.
    """

    def __init__(
        self,
        source: Literal["shapes", "folder", "wds"] = "shapes",
        path: str | None = None,
        val_path: str | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        n_train: int = 20000,
        n_val: int = 500,
        shapes_split: Literal["train", "novel"] = "train",
        val_fraction: float = 0.05,
        random_crop: bool = False,
        use_filename_captions: bool = False,
    ):
        super().__init__()
        if source not in ("shapes", "folder", "wds"):
            raise ValueError(f"data.source must be shapes, folder or wds, got {source!r}")
        if source != "shapes" and not path:
            raise ValueError(f"data.source={source} needs data.path (a folder or shard spec)")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.stream_state: dict = {}  # wds: where each shard stream of the current epoch stands

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.source == "shapes":
            self.train_set = ShapesDataset(h.n_train, h.image_size, h.seed, h.shapes_split)
            self.val_set = ShapesDataset(h.n_val, h.image_size, h.seed, h.shapes_split, offset=h.n_train)
        elif h.source == "folder":
            folder = ImageCaptionFolder(
                h.path, h.image_size, h.random_crop, "random", h.use_filename_captions, seed=h.seed
            )
            order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(h.seed)).tolist()
            n_val = max(1, round(h.val_fraction * len(folder))) if len(folder) > 1 else 0
            self.val_set = folder.view(random_crop=False, caption_choice="first").select(sorted(order[:n_val]))
            self.train_set = folder.select(sorted(order[n_val:]))
        else:
            rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            shards = expand_shard_spec(h.path)
            if h.val_path:
                train_shards, val_shards = shards, expand_shard_spec(h.val_path)
            elif len(shards) > 1:
                train_shards, val_shards = shards[:-1], shards[-1:]
            else:
                raise ValueError(f"{h.path} has one shard: give data.val_path, or write more shards")
            self.train_set = ShardDataset(
                train_shards,
                h.image_size,
                h.random_crop,
                "random",
                rank,
                world_size,
                shuffle_shards=True,
                seed=h.seed,
                workers=self.shard_streams,
            )
            # Every rank validates on all of the validation shards.
            self.val_set = ShardDataset(val_shards, h.image_size, False, "first")

    @property
    def shard_streams(self) -> int:
        """wds: the streams a rank's training shards are read in, one per loader worker (or the main process)."""
        return max(1, self.hparams.num_workers)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Notes where each shard stream stands after a training batch, for `state_dict` (wds only)."""
        if self.trainer is not None and self.trainer.training and "stream" in batch:
            epoch = self.trainer.current_epoch
            if self.stream_state.get("epoch") != epoch:
                self.stream_state = {"epoch": epoch, "streams": self.shard_streams, "positions": {}}
            stream = batch["stream"][0]  # a worker batches its own stream
            self.stream_state["positions"][stream] = max(batch["position"])
            self.stream_state["last_stream"] = stream
        return batch

    def state_dict(self) -> dict:
        """wds: where every rank's shard streams stood (a collective: every rank saves a checkpoint)."""
        if self.hparams.source != "wds":
            return {}
        states = [self.stream_state]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [{} for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(states, self.stream_state)
        return {"shard_streams": states}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict.get("shard_streams", [])
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if states and len(states) != world_size:
            log.warning(
                "the run stopped with %d ranks and goes on with %d: its epoch's shards are read again from their start",
                len(states),
                world_size,
            )
        self.stream_state = states[rank] if len(states) == world_size else {}

    def _resume_shards(self, epoch: int, done: int) -> None:
        """Point the shard streams of an epoch resumed mid-way past what its batches read."""
        state = self.stream_state
        if done == 0 or state.get("epoch") != epoch:
            return
        streams = self.shard_streams
        if state["streams"] != streams:
            log.warning(
                "the run stopped with %d shard streams (data.num_workers) and goes on with %d: "
                "epoch %d is read again from its start",
                state["streams"],
                streams,
                epoch,
            )
            return
        self.train_set.resume(state["positions"], (state["last_stream"] + 1) % streams)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        iterable = isinstance(dataset, torch.utils.data.IterableDataset)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=resumable_shuffle(len(dataset), self.hparams.seed, self.hparams.batch_size, self.trainer)
            if shuffle and not iterable
            else None,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_image_text,
            # Workers of a set that draws per epoch must be made anew each epoch to see its new epoch number.
            persistent_workers=self.hparams.num_workers > 0 and not hasattr(dataset, "set_epoch"),
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        epoch, done = epoch_progress(self.trainer)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        if isinstance(self.train_set, ShardDataset):
            self._resume_shards(epoch, done)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)


def data_module_for(data: str, image_size: int, batch_size: int, num_workers: int) -> ImageTextDataModule:
    """A folder path, or a YAML file with a `data:` block (any stage's config) or a bare data block, or the
    short name of a packaged data block (`shapes-64k`)."""
    path = resolve_config("data", data)
    if path.is_dir():
        settings = {"source": "folder", "path": str(path)}
    elif path.is_file() and path.suffix in (".yaml", ".yml"):
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        settings = dict(config.get("data", config))
    else:
        raise FileNotFoundError(f"--data {data} is neither a folder of image–caption pairs nor a YAML config")
    settings.update(image_size=image_size, batch_size=batch_size, num_workers=num_workers, random_crop=False)
    module = ImageTextDataModule(**settings)
    module.setup("fit")
    return module
