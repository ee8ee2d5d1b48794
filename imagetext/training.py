"""What every stage's `fit` shares: the LightningCLI set-up, checkpoints written atomically, the LR schedule."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.cli import LightningCLI

from imagetext.checkpoints import read_torch
from imagetext.configs import resolve_config
from imagetext.datamodule import DataEpochHooks, ImageTextDataModule
from imagetext.files import atomic_path
from imagetext.progress import ProgressFile


class WarmupCosine:
    """Learning-rate factor of optimiser step `step`: 1/warmup … 1 over `warmup_steps`, then a cosine
    from 1 down to `min_ratio` at `total_steps` (set once the trainer knows it).

    An object rather than a closure, so that LambdaLR stores its settings in the checkpoint.
    """

    def __init__(self, warmup_steps: int, min_ratio: float, total_steps: int | None = None):
        self.warmup_steps, self.min_ratio, self.total_steps = warmup_steps, min_ratio, total_steps

    def __call__(self, step: int) -> float:
        if (
            step <= self.warmup_steps
        ):  # the ramp; the cosine starts at 1 on step warmup_steps, before it needs total_steps
            return min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.total_steps is None:
            raise RuntimeError("WarmupCosine.total_steps is unset: set it once the trainer knows its length")
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def compile_in_place(modules: Iterable[torch.nn.Module]) -> None:
    """`torch.compile` each module in place (`nn.Module.compile`), for a stage's `model.compile: true`.

    Compiled in place, a module keeps its state_dict keys, so checkpoints are the same with or without
    it. Inductor keeps what it builds in its cache folder ($TORCHINDUCTOR_CACHE_DIR, by default
    /tmp/torchinductor_$USER): a later run of the same shapes compiles in seconds, not a minute.
    """
    for module in modules:
        module.compile()


def fit_schedule_to_trainer(module: pl.LightningModule) -> None:
    """Tell the module's WarmupCosine schedule how many optimiser steps the trainer will take.

    Call it from `on_train_start`, not `configure_optimizers`: asking for
    `trainer.estimated_stepping_batches` there makes Lightning build (and, with workers, start) the
    training loader before a resumed run has restored its progress, so a run resumed mid-epoch would
    draw the epoch from its start (Lightning issues #20550, #21938).
    """
    total_steps = module.trainer.estimated_stepping_batches
    if not math.isfinite(total_steps):
        raise ValueError("the cosine schedule needs an end: set trainer.max_epochs or trainer.max_steps")
    module.lr_schedulers().lr_lambdas[0].total_steps = int(total_steps)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a checkpoint appears under its name only once complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            torch.save(checkpoint, temporary)

    def load_checkpoint(self, path: str | os.PathLike, map_location=None, weights_only: bool | None = None) -> dict:
        # Resuming reads our own checkpoints, whose loop and optimiser states hold plain containers only.
        return read_torch(path, map_location or "cpu")


class AtomicCheckpoints(pl.Callback):
    """Makes the trainer write (and resume from) checkpoints through `AtomicCheckpointIO`."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class ProgressFileCallback(pl.Callback):
    """A fit's step / total and its progress-bar metrics, for VQGAN_CLIP_PROGRESS (see imagetext.progress)."""

    def __init__(self):
        self.status: ProgressFile | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.status = ProgressFile.from_environment() if trainer.is_global_zero else None

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self._report(trainer, force=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, force=True)  # the new validation figures at once

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, force=True)

    def _report(self, trainer: pl.Trainer, force: bool) -> None:
        if self.status is None:
            return
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        metrics = {name: float(value) for name, value in trainer.progress_bar_metrics.items()}
        self.status.update("fit", trainer.global_step, None if math.isinf(total) else int(total), metrics, force)


CONFIG_FLAGS = ("-c", "--config")
GPU_ONLY_STRATEGIES = ("fsdp", "deepspeed")  # prefixes of Lightning's names (fsdp_cpu_offload, deepspeed_stage_3, …)


def check_devices(trainer) -> None:
    """A GPU accelerator or a GPU-only strategy asked for where torch sees no GPU: one line naming the
    option to change, before Lightning's own (multi-line) refusal."""
    if trainer is None or torch.cuda.is_available():
        return
    accelerator, strategy = trainer.get("accelerator"), trainer.get("strategy")
    if isinstance(accelerator, str) and accelerator in ("gpu", "cuda"):
        raise ValueError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and torch sees none here: "
            "use --trainer.accelerator cpu (or auto)"
        )
    name = strategy if isinstance(strategy, str) else str(getattr(strategy, "class_path", "")).rsplit(".", 1)[-1]
    if name.lower().startswith(GPU_ONLY_STRATEGIES):
        raise ValueError(
            f"trainer.strategy={name} runs on GPUs only and torch sees none here: use --trainer.strategy ddp "
            "(or, for the prior, -c fsdp: FSDP2, which runs on CPUs too)"
        )


def with_packaged_configs(stage: str, args: list[str]) -> list[str]:
    """`args` with each `-c NAME` that names no file replaced by `stage`'s packaged config NAME.yaml."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        flag, equals, value = arg.partition("=")
        if flag in CONFIG_FLAGS and equals:
            resolved[i] = f"{flag}={resolve_config(stage, value)}"
        elif arg in CONFIG_FLAGS and i + 1 < len(resolved):
            resolved[i + 1] = str(resolve_config(stage, resolved[i + 1]))
    return resolved


def run_stage_cli(
    program: str,
    stage: str,
    module_class: type[pl.LightningModule],
    datamodule_class: type[pl.LightningDataModule] = ImageTextDataModule,
    args: list[str] | None = None,
    linked: dict[str, str] | None = None,
) -> None:
    """`fit / validate / test` with YAML configs read by omegaconf (interpolation like ${data.image_size}).

    `-c` takes a path or the short name of one of `stage`'s packaged configs (`-c shapes`).

    `linked` maps a data argument to the model argument that always takes its value ("data.codes" ->
    "model.codes"): one flag sets both, and setting the model's own is an error. (An interpolation in
    the config would not do: a command-line override of its source leaves it at the config's value.)
    A config mistake that the model or data reject (an unknown key, a size the model cannot take, a
    missing file) ends with one line naming it; VQGAN_CLIP_DEBUG=1 shows the traceback.
    """

    class StageCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            for source, target in (linked or {}).items():
                parser.link_arguments(source, target)

        def parse_arguments(self, parser, args) -> None:
            self.config = parser.parse_args(with_packaged_configs(stage, sys.argv[1:] if args is None else args))
            subcommand = self.config.get("subcommand")
            ckpt_path = subcommand and self.config[subcommand].get("ckpt_path")
            if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
                read_torch(ckpt_path)  # Lightning reads it with torch.load first: a broken file is one line here
            if subcommand:
                check_devices(self.config[subcommand].get("trainer"))

    try:
        StageCLI(
            module_class,
            datamodule_class,
            trainer_defaults={"callbacks": [DataEpochHooks(), AtomicCheckpoints(), ProgressFileCallback()]},
            parser_kwargs={"parser_mode": "omegaconf", "prog": program},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ValueError, FileNotFoundError, MisconfigurationException) as error:
        if os.environ.get("VQGAN_CLIP_DEBUG"):
            raise
        sys.exit(f"{program}: error: {error}")
