"""What every stage's `fit` shares: the LightningCLI set-up and checkpoints that are written atomically."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.cli import LightningCLI

from imagetext.datamodule import DataEpochHooks, ImageTextDataModule
from imagetext.files import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a checkpoint appears under its name only once complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            torch.save(checkpoint, temporary)

    def load_checkpoint(self, path: str | os.PathLike, map_location=None, weights_only: bool | None = None) -> dict:
        # Resuming reads our own checkpoints, whose loop and optimiser states hold plain containers only.
        return torch.load(Path(path), map_location=map_location or "cpu", weights_only=True)


class AtomicCheckpoints(pl.Callback):
    """Makes the trainer write (and resume from) checkpoints through `AtomicCheckpointIO`."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def run_stage_cli(
    program: str,
    module_class: type[pl.LightningModule],
    datamodule_class: type[pl.LightningDataModule] = ImageTextDataModule,
    args: list[str] | None = None,
) -> None:
    """`fit / validate / test` with YAML configs read by omegaconf (interpolation like ${data.image_size}).

    A config mistake that the model or data reject (an unknown key, a size the model cannot take, a
    missing file) ends with one line naming it; VQGAN_CLIP_DEBUG=1 shows the traceback.
    """
    try:
        LightningCLI(
            module_class,
            datamodule_class,
            trainer_defaults={"callbacks": [DataEpochHooks(), AtomicCheckpoints()]},
            parser_kwargs={"parser_mode": "omegaconf", "prog": program},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("VQGAN_CLIP_DEBUG"):
            raise
        sys.exit(f"{program}: error: {error}")
