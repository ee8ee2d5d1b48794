"""Images per second of one VQGAN training step: taming's step versus this project's, in one run.

    python bench/vqgan_train.py                                  # emoji architecture, batch 16
    python bench/vqgan_train.py --threads 1 --rounds 5           # on cores shared with other jobs
    python bench/vqgan_train.py --config configs/vqgan/shapes.yaml

Variants, all on the architecture in the config's `model` section, with the discriminator on from
the first step (disc_start 0) so that every variant does the same kind of work:

  (a) taming   the step of taming-transformers' VQModel under Lightning 1.x automatic optimisation,
               restated here (`TamingStyleStep`) on this project's networks: optimizer_idx 0 runs the
               whole autoencoder (taming's quantiser, its output made contiguous as taming does),
               L1 + LPIPS, the generator loss and the adaptive weight (taming computes it every step),
               backward, step; optimizer_idx 1 runs the whole autoencoder AGAIN for its
               reconstructions, L1 and LPIPS again (taming's loss computes them before it looks at
               optimizer_idx), then the discriminator loss, backward, step. As Lightning 1.x does with
               several optimisers, the parameters of the other optimiser are frozen
               (`toggle_optimizer`) during each half, so the second forward builds no graph. fp32.
               tests/test_bench_baselines.py checks its losses and updated weights against
               `VQGANModule.training_step` and against taming's formulas.
  (b) ours     `VQGANModule.training_step` itself: one autoencoder forward, generator step, then
               discriminator step on the same reconstructions; the config's quantiser; fp32.
  (c) ours     the same under torch.autocast("cpu", bfloat16) with the module's channels_last option.

(b) and (c) call the real `training_step` with the two things a Trainer would hand it, its optimisers
and backward (see `TrainerFreeModule`), so no variant pays Lightning's loop overhead. The machine
may be shared: the variants are interleaved over several rounds (the order rotating) and each
reports its median round, in wall-clock time (img/s) and in process CPU time (with --threads 1 the
latter leaves out the time other jobs hold the cores). Random weights and random [-1, 1] images: speed does not depend on them.

What (a) leaves out of taming's step: Lightning 1.x's own loop and logging; taming's `get_input`
(a permute of channels-last batches); LPIPS dropout, which taming's training has on (Lightning's
`train()` undoes the LPIPS `.eval()`; this project keeps it off, so (a) does too); and taming's
autoencoder code itself (x·sigmoid(x) and a bmm/softmax attention, where this project's networks
use SiLU and scaled_dot_product_attention).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import OmegaConf
from torch import Tensor

from imagetext.configs import packaged_config
from vqgan.lightning import VQGANModule

DEFAULT_CONFIG = packaged_config("vqgan", "emoji")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="a vqgan fit YAML; its model section is used"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each variant reports its median round")
    parser.add_argument("--steps-per-round", type=int, default=2, help="training steps per variant per round")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per variant before the rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("batch_size", "rounds", "steps_per_round"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def model_settings(config_path: Path) -> dict[str, Any]:
    """The config's `model` section as plain values, interpolations such as ${data.image_size} resolved."""
    if not config_path.is_file():
        raise SystemExit(f"config {config_path} not found; pass --config with a file such as configs/vqgan/emoji.yaml")
    config = OmegaConf.load(config_path)
    if "model" not in config:
        raise SystemExit(
            f"{config_path} has no model section; pass a vqgan fit config such as configs/vqgan/emoji.yaml"
        )
    return OmegaConf.to_container(config.model, resolve=True)


class BenchOptimizer:
    """What the step uses of Lightning's optimizer wrapper: `toggle_model` (only this optimizer's
    parameters want gradients inside the block; no DDP here to synchronise), `step`, `zero_grad`."""

    def __init__(self, module: VQGANModule, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = module, optimizer

    @contextmanager
    def toggle_model(self, sync_grad: bool = True):
        self.module.toggle_optimizer(self.optimizer)
        yield
        self.module.untoggle_optimizer(self.optimizer)

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


class TrainerFreeModule(VQGANModule):
    """A VQGANModule whose `training_step` runs without a Trainer: `optimizers()` and `manual_backward`
    are what the Trainer would provide (plain Adam pair from `configure_optimizers`, `loss.backward()`).
    What the step logs is kept in `logged` (the last values only) instead of going to a logger."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.bench_optimizers = self.configure_optimizers()
        self.logged: dict[str, Any] = {}

    def optimizers(self, use_pl_optimizer: bool = True) -> list[BenchOptimizer]:
        return [BenchOptimizer(self, optimizer) for optimizer in self.bench_optimizers]

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(*args, **kwargs)

    def toggle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        others = [opt for opt in self.bench_optimizers if opt is not optimizer]
        self._toggled = only_training(optimizer, others)
        self._toggled.__enter__()

    def untoggle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._toggled.__exit__(None, None, None)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self.logged[name] = value

    def log_dict(self, values: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self.logged.update(values)


@contextmanager
def only_training(active: torch.optim.Optimizer, others: list[torch.optim.Optimizer]):
    """Lightning 1.x's toggle_optimizer: freeze every parameter of the other optimisers for one half-step."""
    frozen = [p for opt in others for group in opt.param_groups for p in group["params"]]
    active_params = {id(p) for group in active.param_groups for p in group["params"]}
    frozen = [p for p in frozen if id(p) not in active_params]
    was_trainable = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, trainable in zip(frozen, was_trainable):
            p.requires_grad_(trainable)


def taming_quantize(z: Tensor, codebook: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """taming's VectorQuantizer2 (legacy β placement, no remap), restated: encoder output z [B,d,h,w] ->
    (quantised z, contiguous [B,d,h,w], with the straight-through gradient; its codebook loss)."""
    vectors = rearrange(z, "b d h w -> b h w d").contiguous()
    flat = vectors.view(-1, codebook.shape[1])
    distances = (
        flat.pow(2).sum(dim=1, keepdim=True)
        + codebook.pow(2).sum(dim=1)
        - 2 * torch.einsum("nd,dk->nk", flat, codebook.t())
    )
    quantized = F.embedding(distances.argmin(dim=1), codebook).view(vectors.shape)
    # legacy: the commitment term (encoder towards codes) at full weight, the codebook term at β
    loss = (quantized.detach() - vectors).pow(2).mean() + beta * (quantized - vectors.detach()).pow(2).mean()
    quantized = vectors + (quantized - vectors).detach()
    return rearrange(quantized, "b h w d -> b d h w").contiguous(), loss


def taming_d_loss(kind: str, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """taming's hinge_d_loss / vanilla_d_loss."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


class TamingStyleStep:
    """taming's VQModel.training_step as Lightning 1.x runs it: two optimizer_idx passes per batch,
    each with its own full autoencoder forward, and VQLPIPSWithDiscriminator's losses, restated
    from taming's formulas. Runs on the module's networks (encoder, codebook, decoder, PatchGAN,
    LPIPS) and optimisers; the module must have taming's quantiser (quantizer {}).

    Calling it takes one step on a batch and returns the losses taming logs (detached)."""

    def __init__(self, module: TrainerFreeModule) -> None:
        q = module.model.config.quantizer
        if q.kind != "vq" or not q.legacy or q.l2_normalize or q.codebook_dim or q.ema or q.restart_unused_after:
            raise ValueError("the taming step needs taming's quantiser: build the module with quantizer {}")
        self.module = module
        self.opt_g, self.opt_d = module.bench_optimizers

    def autoencode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """VQModel.forward: encode, quantise, decode -> (reconstructions, codebook loss)."""
        model = self.module.model
        z_q, codebook_loss = taming_quantize(
            model.quant_conv(model.encoder(images)), model.quantize.embedding.weight, model.config.quantizer.beta
        )
        return model.decoder(model.post_quant_conv(z_q)), codebook_loss

    def reconstruction_loss(self, images: Tensor, reconstructions: Tensor) -> tuple[Tensor, Tensor]:
        """(nll_loss, p_loss): mean of |x - x̂| + perceptual_weight · LPIPS(x, x̂) per image [B,1,1,1]. taming
        has a pixelloss_weight but never applies it."""
        h = self.module.hparams
        rec_loss = (images.contiguous() - reconstructions.contiguous()).abs()
        p_loss = images.new_zeros(())
        if h.perceptual_weight > 0:
            p_loss = self.module.perceptual.net(images.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + h.perceptual_weight * p_loss
        return rec_loss.mean(), p_loss

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        m, h = self.module, self.module.hparams
        last_layer = m.model.decoder.conv_out.weight
        with only_training(self.opt_g, [self.opt_d]):  # optimizer_idx 0: autoencoder
            reconstructions, codebook_loss = self.autoencode(images)
            nll_loss, p_loss = self.reconstruction_loss(images, reconstructions)
            g_loss = -m.discriminator(reconstructions.contiguous()).mean()
            (nll_grads,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
            (g_grads,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
            d_weight = (nll_grads.norm() / (g_grads.norm() + 1e-4)).clamp(0.0, h.adaptive_weight_clamp).detach()
            d_weight = d_weight * h.disc_weight
            loss = nll_loss + d_weight * h.disc_factor * g_loss + h.codebook_weight * codebook_loss.mean()
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()
        with only_training(self.opt_d, [self.opt_g]):  # optimizer_idx 1: discriminator
            reconstructions, _ = self.autoencode(images)
            self.reconstruction_loss(images, reconstructions)  # computed by taming's loss in this pass too, unused
            logits_real = m.discriminator(images.contiguous().detach())
            logits_fake = m.discriminator(reconstructions.contiguous().detach())
            d_loss = h.disc_factor * taming_d_loss(h.disc_loss, logits_real, logits_fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        return {
            "total_loss": loss.detach(),
            "quant_loss": codebook_loss.detach(),
            "nll_loss": nll_loss.detach(),
            "p_loss": p_loss.detach().mean(),
            "d_weight": d_weight,
            "g_loss": g_loss.detach(),
            "disc_loss": d_loss.detach(),
        }


def build_variants(settings: dict[str, Any]) -> dict[str, Callable[[torch.Tensor], None]]:
    """name -> one training step on a batch of images."""
    common = {**settings, "disc_start": 0}
    taming = TrainerFreeModule(**{**common, "config": {**settings["config"], "quantizer": {}}, "channels_last": False})
    ours_fp32 = TrainerFreeModule(**{**common, "channels_last": False})
    ours_bf16 = TrainerFreeModule(**{**common, "channels_last": True})

    def ours_fp32_step(images: torch.Tensor) -> None:
        ours_fp32.training_step({"image": images}, 0)

    def ours_bf16_step(images: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours_bf16.training_step({"image": images}, 0)

    return {
        "(a) taming, 2 forwards, fp32": TamingStyleStep(taming),
        "(b) ours, 1 forward, fp32": ours_fp32_step,
        "(c) ours, bf16 + channels_last": ours_bf16_step,
    }


def seconds_per_step(
    step: Callable[[torch.Tensor], None], batches: list[torch.Tensor], steps: int
) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds per step. CPU time leaves out the time other jobs hold the
    cores, so with one thread it is the steadier measure of work on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def cpu_facts() -> tuple[str, list[str]]:
    """(CPU model name, which of the bf16-relevant ISA flags /proc/cpuinfo lists)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    name = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    return name, [flag for flag in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if flag in flags]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = model_settings(args.config)
    torch.manual_seed(args.seed)
    variants = build_variants(settings)

    generator = torch.Generator().manual_seed(args.seed)
    image_size = settings["config"]["ddconfig"]["resolution"]
    batches = [torch.rand(args.batch_size, 3, image_size, image_size, generator=generator) * 2 - 1 for _ in range(4)]

    cpu_name, flags = cpu_facts()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_name}, {platform.machine()}; "
        f"ISA flags: {', '.join(flags) or 'none of avx512f/avx512_bf16/amx'}; "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    dd = settings["config"]["ddconfig"]
    print(
        f"config {args.config}: {image_size} px, ch {dd['ch']}, ch_mult {dd['ch_mult']}, attention at {dd['attn_resolutions']}, "
        f"{settings['config']['n_embed']} codes × {settings['config']['embed_dim']}, discriminator ndf {settings.get('disc_ndf', 64)} "
        f"layers {settings.get('disc_layers', 3)}, perceptual_weight {settings.get('perceptual_weight', 1.0)}; "
        f"quantizer (b, c) {settings['config'].get('quantizer') or {}}"
    )
    print(
        f"batch {args.batch_size}; {args.warmup_steps} warm-up steps, then {args.rounds} rounds × "
        f"{args.steps_per_round} steps per variant, interleaved\n"
    )

    names = list(variants)
    for name in names:  # first calls allocate buffers and pick kernels
        for i in range(args.warmup_steps):
            variants[name](batches[i % len(batches)])
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate so no variant always runs first
        for name in order:
            wall_s, cpu_s = seconds_per_step(variants[name], batches, args.steps_per_round)
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)

    median_wall = {name: statistics.median(times) for name, times in wall.items()}
    median_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    print(f"{'variant':<32} {'img/s':>7} {'ms/step':>8} {'rounds min–max':>15} {'CPU ms/step':>12}")
    for name in names:
        spread = f"{min(wall[name]) * 1e3:.0f}–{max(wall[name]) * 1e3:.0f}"
        print(
            f"{name:<32} {args.batch_size / median_wall[name]:>7.1f} {median_wall[name] * 1e3:>8.0f} "
            f"{spread:>15} {median_cpu[name] * 1e3:>12.0f}"
        )
    print("(img/s and ms/step: median wall-clock round; CPU ms/step: median process CPU time per step)\n")
    a, b, c = names
    for label, x, y in [
        ("b/a  ours fp32 vs taming fp32", b, a),
        ("c/a  ours bf16+channels_last vs taming fp32", c, a),
        ("c/b  ours bf16+channels_last vs ours fp32", c, b),
    ]:
        print(
            f"{label:<45} {median_wall[y] / median_wall[x]:.2f}× img/s   "
            f"({median_cpu[y] / median_cpu[x]:.2f}× by CPU time)"
        )


if __name__ == "__main__":
    main()
