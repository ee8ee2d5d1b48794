"""Training the VQGAN with Lightning: reconstruction + perceptual + codebook + adversarial losses.

One encoder/decoder forward per batch (taming runs it twice), then a generator step and, once the
discriminator is on, a discriminator step on the same reconstructions — Lightning's manual
optimisation. The adaptive GAN weight ‖∇rec‖/(‖∇gan‖+1e-4) at the decoder's last layer is computed
only while the discriminator is on.

Lightning counts every `optimizer.step()` in `trainer.global_step`, so once the discriminator is on
a batch advances it by two; `disc_start` counts batches (generator steps), kept in `generator_steps`.
bf16 autocast is Lightning's `trainer.precision: bf16-mixed`; `channels_last` is an option here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from einops import rearrange

from imagetext.images import save_grid
from imagetext.training import compile_in_place
from vqgan.checkpoint import STAGE, metadata
from vqgan.discriminator import NLayerDiscriminator, adaptive_disc_weight, discriminator_loss, generator_loss
from vqgan.model import VQGAN, VQGANConfig
from vqgan.perceptual import LPIPSLoss
from vqgan.pretrained import public_files, public_names
from vqgan.quantize import CodebookUsage
from vqgan.taming import from_taming


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2), averaged over the batch."""
    mse = (images.float() - reconstructions.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()


class VQGANModule(pl.LightningModule):
    """The LightningModule around a plain `VQGAN` (`self.model`) and its PatchGAN (`self.discriminator`).

    Args:
        config: the VQGAN (vqgan.model.VQGANConfig, or the same as a mapping): `ddconfig` (taming's
            encoder/decoder settings), `embed_dim` and `n_embed` (code vector and codebook size) and
            `quantizer` (how codes are learned, vqgan.quantize.QuantizerConfig; {} is taming's). A second
            `-c` file can swap just `config.quantizer`.
        learning_rate: Adam learning rate for both optimisers, betas (0.5, 0.9) as in taming.
        pixel_weight, perceptual_weight, codebook_weight: weights of L1, LPIPS and the quantiser loss.
        perceptual_backbone: LPIPS's VGG16 weights: None = torchvision's cache, a file path, or "random" (tests).
        disc_start: batches before the discriminator (and its generator loss) switch on.
        disc_weight, disc_factor: scale of the adaptive GAN weight, and of both adversarial losses.
        disc_loss: "hinge" or "vanilla". disc_ndf, disc_layers: PatchGAN width and depth.
        adaptive_weight_clamp: upper bound of the adaptive weight (taming: 1e4).
        channels_last: run the convolutions in channels_last memory format.
        compile: torch.compile the encoder, the decoder and the discriminator.
        accumulate_grad_batches: batches whose gradients add up into one step of each optimiser (the
            module steps its two optimisers itself, so Lightning's trainer.accumulate_grad_batches does
            not apply); disc_start counts steps. Under DDP gradients are synchronised on the last batch only.
        init_from_taming: {config: model.yaml, checkpoint: last.ckpt}, or {name: vqgan_imagenet_f16_1024} for a
            public one (downloaded once, vqgan.pretrained), to fine-tune a taming VQGAN (its discriminator
            is taken over when the shapes match).
        grid_images: how many validation images the per-epoch reconstruction grid shows.
    """

    def __init__(
        self,
        config: VQGANConfig,
        learning_rate: float = 2e-4,
        pixel_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_backbone: str | None = None,
        codebook_weight: float = 1.0,
        disc_start: int = 2000,
        disc_weight: float = 0.8,
        disc_factor: float = 1.0,
        disc_loss: str = "hinge",
        disc_ndf: int = 64,
        disc_layers: int = 3,
        adaptive_weight_clamp: float = 1e4,
        channels_last: bool = False,
        init_from_taming: dict[str, str] | None = None,
        grid_images: int = 8,
        compile: bool = False,
        accumulate_grad_batches: int = 1,
    ):
        super().__init__()
        if accumulate_grad_batches < 1:
            raise ValueError(f"model.accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        config = VQGANConfig.from_dict(config)
        self.model = VQGAN(config)
        # save_hyperparameters reads the arguments from this frame: plain types, so that a checkpoint
        # reads back with torch.load(weights_only=True).
        config = config.to_dict()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.discriminator = NLayerDiscriminator(self.model.config.ddconfig.out_ch, disc_ndf, disc_layers)
        if init_from_taming:
            self._load_taming(init_from_taming)
        self.d_loss_fn = discriminator_loss(disc_loss)
        self.perceptual = LPIPSLoss(perceptual_backbone) if perceptual_weight > 0 else None
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.val_usage = CodebookUsage(self.model.codebook_size)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def configure_model(self) -> None:
        if self.hparams.compile:
            compile_in_place([self.model.encoder, self.model.decoder, self.discriminator])

    def _load_taming(self, source: dict[str, str]) -> None:
        if set(source) == {"name"}:
            config, checkpoint = public_files(source["name"])
        elif {"config", "checkpoint"} <= set(source):
            config, checkpoint = source["config"], source["checkpoint"]
        else:
            raise ValueError(
                f"init_from_taming takes {{config: model.yaml, checkpoint: last.ckpt}} or {{name: "
                f"PUBLIC_NAME}} ({', '.join(public_names())}); got keys {sorted(source)}"
            )
        taming_model, taming_disc = from_taming(config, checkpoint, keep_discriminator=True)
        self.model.load_state_dict(taming_model.state_dict(), strict=True)
        if taming_disc is not None:
            self.discriminator.load_state_dict(taming_disc.state_dict(), strict=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAGE] = metadata(self.model)  # what `vqgan.load("last.ckpt")` rebuilds the model from

    def state_dict(self, *args, **kwargs):
        # LPIPS is a frozen, separately shipped network: keep it out of our checkpoints.
        state = super().state_dict(*args, **kwargs)
        return {key: value for key, value in state.items() if not key.startswith("perceptual.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.perceptual is not None:
            state_dict = {**state_dict, **{f"perceptual.{k}": v for k, v in self.perceptual.state_dict().items()}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def configure_optimizers(self):
        betas = (0.5, 0.9)
        opt_g = torch.optim.Adam(self.model.parameters(), lr=self.hparams.learning_rate, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.learning_rate, betas=betas)
        return [opt_g, opt_d]

    def _images(self, batch: dict) -> torch.Tensor:
        images = batch["image"]
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def reconstruction_loss(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        loss = self.hparams.pixel_weight * (images - reconstructions).abs().mean()
        if self.perceptual is not None:
            loss = loss + self.hparams.perceptual_weight * self.perceptual(images, reconstructions)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        h = self.hparams
        step_now = (batch_idx + 1) % h.accumulate_grad_batches == 0 or (
            h.accumulate_grad_batches > 1 and self.trainer.is_last_batch
        )
        share = 1.0 / h.accumulate_grad_batches  # of the step's gradient
        images = self._images(batch)
        disc_on = int(self.generator_steps) >= h.disc_start and h.disc_factor > 0
        # toggle_model: the discriminator's weights need no gradients in this backward, and under DDP
        # the gradients are synchronised only on the batch that steps.
        with opt_g.toggle_model(sync_grad=step_now):
            reconstructions, quantized = self.model(images)
            rec_loss = self.reconstruction_loss(images, reconstructions)
            g_loss = torch.zeros((), device=images.device)
            d_weight = torch.zeros((), device=images.device)
            if disc_on:
                g_loss = generator_loss(self.discriminator(reconstructions))
                d_weight = h.disc_weight * adaptive_disc_weight(
                    rec_loss, g_loss, self.model.last_layer, h.adaptive_weight_clamp
                )
            loss = rec_loss + h.codebook_weight * quantized.loss + d_weight * h.disc_factor * g_loss
            self.manual_backward(loss * share)
        if step_now:
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            self.generator_steps += 1

        d_loss = torch.zeros((), device=images.device)
        if disc_on:
            logits_real = self.discriminator(images.detach())
            logits_fake = self.discriminator(reconstructions.detach())
            d_loss = h.disc_factor * self.d_loss_fn(logits_real, logits_fake)
            with opt_d.toggle_model(sync_grad=step_now):
                self.manual_backward(d_loss * share)
            if step_now:
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)

        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/rec_loss": rec_loss.detach(),
                "train/codebook_loss": quantized.loss.detach(),
                "train/g_loss": g_loss.detach(),
                "train/d_loss": d_loss.detach(),
                "train/d_weight": d_weight,
                "train/usage": quantized.usage,
                "train/perplexity": quantized.perplexity,
            },
            prog_bar=False,
        )
        self.log("rec", rec_loss.detach(), prog_bar=True, logger=False)

    def on_validation_epoch_start(self) -> None:
        self.val_usage.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = self._images(batch)
        reconstructions, quantized = self.model(images)
        self.val_usage.update(quantized.codes)
        self.log_dict(
            {
                "val/rec_loss": self.reconstruction_loss(images, reconstructions),
                "val/l1": (images - reconstructions).abs().mean(),
            },
            batch_size=len(images),
            sync_dist=True,
        )
        self.log("val/psnr", psnr(images, reconstructions), batch_size=len(images), sync_dist=True, prog_bar=True)
        if batch_idx == 0:
            self._save_grid(images, reconstructions)

    def on_validation_epoch_end(self) -> None:
        stats = self.val_usage.compute()
        self.log_dict({"val/usage": stats["usage"], "val/perplexity": stats["perplexity"]}, rank_zero_only=True)

    def _save_grid(self, images: torch.Tensor, reconstructions: torch.Tensor) -> None:
        """Originals in the top row, their reconstructions below, one PNG per validation epoch."""
        if self.trainer.sanity_checking:
            return
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if log_dir is None or not self.trainer.is_global_zero:
            return
        n = min(self.hparams.grid_images, len(images))
        pair = torch.stack([images[:n], reconstructions[:n].clamp(-1, 1)])
        grid = rearrange(pair, "row b c h w -> (row b) c h w")
        save_grid(grid, Path(log_dir) / "reconstructions" / f"epoch{self.current_epoch:04d}.png", nrow=n)
