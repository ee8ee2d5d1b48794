"""Training the GPT prior with Lightning on code shards: caption BPE, condition dropout, AdamW + warmup/cosine.

Building the module reads the code-shard manifest (grid, codebook size, which VQGAN made the codes)
and trains the caption BPE on the training captions, because the model's text vocabulary is the
tokenizer's size. Every checkpoint carries what generation needs besides the weights: the
GPTConfig, the tokenizer JSON and the VQGAN's path + sha256 (`gpt_prior.load` reads them back).

Gradient clipping is `trainer.gradient_clip_val` and bf16 autocast is `trainer.precision: bf16-mixed`:
Lightning does both. The learning rate warms up linearly, then follows a cosine down to
`min_lr_ratio` of its peak at the trainer's last step, updated every optimiser step.

The schedule learns the trainer's step count in `on_train_start` (`fit_schedule_to_trainer` says why).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.optim.lr_scheduler import LambdaLR

from gpt_prior.checkpoint import STAGE, metadata
from gpt_prior.data import read_split
from gpt_prior.model import ADAMW_BETAS, GPT, GPTConfig, GPTOutput
from gpt_prior.tokenizer import FILE_NAME as TOKENIZER_FILE
from gpt_prior.tokenizer import TextTokenizer, train_tokenizer
from imagetext.code_shards import read_manifest
from imagetext.configs import config_from_dict
from imagetext.seeding import keyed_generator
from imagetext.training import WarmupCosine, compile_in_place, fit_schedule_to_trainer


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator) -> list[str]:
    """Condition dropout: each caption becomes "" (the unconditional prompt) with probability p."""
    keep = torch.rand(len(captions), generator=generator) >= p
    return [caption if kept else "" for caption, kept in zip(captions, keep.tolist())]


class GPTPriorModule(pl.LightningModule):
    """The LightningModule around a plain `GPT` (`self.model`) and its caption tokenizer (`self.tokenizer`).

    Args:
        codes: the `vqgan-clip tokenize` output folder: its manifest gives the code grid, the codebook
            size and the VQGAN, its training captions the BPE. `gpt-prior fit` links it to data.codes
            (one flag, `--data.codes`, sets both).
        gpt: the transformer (gpt_prior.model.GPTConfig): text_len (caption ids per sample; longer
            captions are cut, with a warning), n_layer, n_head, n_embd, dropout, and DALL·E's 1 : 7
            text_loss_weight : image_loss_weight. Its vocabularies and code grid come from the data.
        vocab_size: the most BPE ids to learn; a small caption set stops below it.
        tokenizer: a tokenizer.json (or a run folder holding one) to use instead of learning a BPE,
            e.g. to train several priors on one vocabulary; vocab_size is then unused.
        condition_dropout: probability that a training caption is replaced by "" (for classifier-free guidance).
        condition_dropout_seed: seeds those draws, keyed by (epoch, batch, rank), so a resumed run repeats them.
        learning_rate: AdamW peak rate, betas (0.9, 0.95).
        weight_decay: AdamW decay of the Linear matrices (none on embeddings, norms and biases).
        warmup_steps: optimiser steps of linear warmup.
        min_lr_ratio: the cosine ends at min_lr_ratio × learning_rate on the trainer's last step.
        sampling: generation defaults the checkpoint carries (any of temperature, top_k, top_p,
            cfg_scale), which `vqgan-clip generate` and `eval` use where no flag overrides them.
        compile: torch.compile each transformer block (the first steps then take the compile time).
    """

    def __init__(
        self,
        codes: str,
        gpt: GPTConfig | None = None,
        vocab_size: int = 1024,
        tokenizer: str | None = None,
        condition_dropout: float = 0.1,
        condition_dropout_seed: int = 0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        sampling: dict[str, float | int | None] | None = None,
        compile: bool = False,
    ):
        super().__init__()
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"model.condition_dropout is a probability in [0, 1], got {condition_dropout}")
        if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                f"model.warmup_steps must be >= 0 and model.min_lr_ratio in [0, 1]; got {warmup_steps}, {min_lr_ratio}"
            )
        gpt = config_from_dict(GPTConfig, gpt or {}, "model.gpt")
        given = [name for name, value in gpt.data_sizes.items() if value is not None]
        if given:
            raise ValueError(f"model.gpt.{given[0]} comes from the tokenizer and the codes' manifest; remove it")
        manifest = read_manifest(codes)
        _, train_captions = read_split(codes, "train")
        caption_lines = [line for lines in train_captions for line in lines]
        self.tokenizer = TextTokenizer.load(tokenizer) if tokenizer else train_tokenizer(caption_lines, vocab_size)
        # Encode every training caption once, only for the tokenizer's one warning that counts those
        # longer than text_len; the per-batch encodes below then stay quiet.
        self.tokenizer.encode_batch(caption_lines, gpt.text_len)
        self.vqgan_reference = {"vqgan": manifest["vqgan"], "vqgan_sha256": manifest["vqgan_sha256"]}
        self.model = GPT(
            replace(
                gpt,
                text_vocab_size=self.tokenizer.vocab_size,
                image_vocab_size=manifest["codebook_size"],
                image_grid=tuple(manifest["grid"]),
                text_pad_id=self.tokenizer.pad_id,
            )
        )
        # save_hyperparameters reads the arguments from this frame: plain types, so that a checkpoint
        # reads back with torch.load(weights_only=True).
        gpt = asdict(gpt)
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        # Each DDP rank built its own BPE in __init__, and the `tokenizers` trainer numbers some tokens in
        # hash-map order, so ranks can disagree on the ids: all of them take rank 0's tokenizer.
        self.tokenizer = TextTokenizer.from_json(self.trainer.strategy.broadcast(self.tokenizer.to_json(), src=0))

    def configure_model(self) -> None:
        """Compile the blocks if asked. Under Lightning's ModelParallelStrategy (FSDP2), shard each
        transformer block and then the rest of the prior over all ranks, for a prior too big for one
        device's memory.

        The strategy's own mesh is nodes × devices (for tensor parallelism, which the prior does not
        use): the prior shards over one flat mesh of every rank instead.
        """
        if self.hparams.compile:
            compile_in_place(self.model.blocks)
        if not hasattr(self.trainer.strategy, "device_mesh") or isinstance(self.model, FSDPModule):
            return  # another strategy, or already sharded
        mesh = init_device_mesh(self.device.type, (self.trainer.world_size,))
        for block in self.model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    def configure_optimizers(self) -> dict:
        h = self.hparams
        optimizer = torch.optim.AdamW(self.model.param_groups(h.weight_decay), lr=h.learning_rate, betas=ADAMW_BETAS)
        schedule = WarmupCosine(h.warmup_steps, h.min_lr_ratio)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"},
        }

    def text_tokens(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions → LongTensor [B, text_len] on the module's device (truncation was reported at build time)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.tokenizer.encode_batch(captions, self.model.config.text_len).to(self.device)

    def _loss(self, captions: Sequence[str], codes: torch.Tensor, stage: str) -> GPTOutput:
        out = self.model(self.text_tokens(captions), codes)
        self.log_dict(
            {f"{stage}/loss": out.loss, f"{stage}/loss_text": out.loss_text, f"{stage}/loss_img": out.loss_img},
            batch_size=len(captions),
            sync_dist=stage == "val",
        )
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Keyed by batch rather than by global_step, so batches accumulated into one step draw apart.
        generator = keyed_generator(
            self.hparams.condition_dropout_seed, self.current_epoch, batch_idx, self.global_rank
        )
        captions = drop_captions(batch["caption"], self.hparams.condition_dropout, generator)
        out = self._loss(captions, batch["codes"], "train")
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return out.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._loss(batch["caption"], batch["codes"], "val")

    def on_train_start(self) -> None:
        fit_schedule_to_trainer(self)
        # Written after a resume has restored the checkpoint's tokenizer (on_load_checkpoint): the file matches the weights.
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if log_dir is not None and self.trainer.is_global_zero:
            self.tokenizer.save(Path(log_dir) / TOKENIZER_FILE)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAGE] = metadata(
            self.model.config,
            self.tokenizer,
            self.vqgan_reference["vqgan"],
            self.vqgan_reference["vqgan_sha256"],
            dict(self.hparams.sampling or {}),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming: the weights go with the tokenizer they were trained with.
        saved = checkpoint.get(STAGE)
        if saved is None:
            raise ValueError("this checkpoint has no GPT prior tokenizer: resume from a checkpoint of `gpt-prior fit`")
        tokenizer = TextTokenizer.from_json(saved["tokenizer"])
        if tokenizer.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"the checkpoint's tokenizer has {tokenizer.vocab_size} ids, this run's {self.tokenizer.vocab_size}: "
                f"resume with the codes folder and vocab_size the checkpoint was trained with"
            )
        self.tokenizer = tokenizer
