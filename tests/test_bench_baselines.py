"""The anchors' steps in bench/ do the anchors' maths: taming's VQGAN training step (bench/vqgan_train.py)
and the VQGAN-CLIP scripts' step (bench/optimize.py) compute the same losses, gradients and updates as this
project's steps on the same weights and inputs, and as taming's formulas where the project differs on
purpose. Tiny random models; offline."""

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clip_rerank
import vqgan
from optimize import Augmentations, OptimizeSettings, TextPrompt, optimize

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_script(name: str):
    """Import bench/NAME.py as a module (bench/ is not a package; bench/optimize.py would shadow `optimize`)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # bench/optimize.py edits it
    return module


# --- taming's VQGAN training step ------------------------------------------------------------------

VQGAN_SETTINGS = {
    "config": {
        "embed_dim": 8,
        "n_embed": 16,
        # 64 channels, two per GroupNorm group: with one, the rounding noise a one-channel norm passes
        # back puts some gradients just past 1e-5 of the largest
        "ddconfig": {
            "ch": 64,
            "ch_mult": [1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [8],
            "resolution": 16,
            "z_channels": 8,
        },
        "quantizer": {},  # taming's
    },
    "learning_rate": 1e-3,
    "perceptual_weight": 1.0,
    "perceptual_backbone": "random",
    "disc_start": 0,
    "disc_weight": 0.8,
    "disc_ndf": 8,
    "disc_layers": 2,
}


def taming_hinge(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-6):
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (
        f"{what}: {actual.flatten()[:4].tolist()} vs {expected.flatten()[:4].tolist()}, "
        f"max difference {(actual - expected).abs().max().item():.3g}"
    )


def gradients_before_step(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Filled with a copy of `module`'s gradients each time `optimizer` steps (the step zeroes them after)."""
    recorded: dict[str, torch.Tensor] = {}
    step = optimizer.step

    def record_then_step(*args, **kwargs):
        recorded.update({name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    optimizer.step = record_then_step
    return recorded


def assert_same_gradients(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str, tolerance: float = 1e-5
) -> None:
    """Equal up to `tolerance` × the largest gradient: some weights' gradients are zero in exact arithmetic
    and pure rounding noise here (an attention key's bias shifts every logit of a row alike; a conv bias
    before a GroupNorm of one channel per group is normalised away)."""
    assert actual.keys() == expected.keys() and actual
    scale = max(g.abs().max() for g in expected.values())
    for name, gradient in expected.items():
        assert_close(actual[name], gradient, f"{what} gradient of {name}", rtol=0, atol=tolerance * scale)


def test_taming_step_computes_the_projects_losses_and_updates():
    """(a) in bench/vqgan_train.py against `VQGANModule.training_step` (taming's quantiser, discriminator on
    from step 0): the same generator-side losses and autoencoder gradients, and the same autoencoder after
    the step. Its discriminator step sees the reconstructions of the UPDATED autoencoder (taming's second
    forward) where ours reuses the first ones, so that half is checked against taming's hinge loss and
    Adam restated here."""
    bench = bench_script("vqgan_train")
    torch.manual_seed(0)
    ours = bench.TrainerFreeModule(**VQGAN_SETTINGS)
    torch.manual_seed(0)
    taming = bench.TrainerFreeModule(**VQGAN_SETTINGS)  # the same weights, LPIPS's random backbone included
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    discriminator_before, model_before = copy.deepcopy(ours.discriminator), copy.deepcopy(ours.model)
    our_gradients = gradients_before_step(ours.bench_optimizers[0], ours.model)

    ours.training_step({"image": images}, 0)
    losses = bench.TamingStyleStep(taming)(images)

    logged = ours.logged
    assert_close(losses["total_loss"], logged["train/loss"], "generator-side total")
    assert_close(losses["nll_loss"], logged["train/rec_loss"], "L1 + LPIPS")
    assert_close(losses["quant_loss"], logged["train/codebook_loss"], "codebook loss")
    assert_close(losses["g_loss"], logged["train/g_loss"], "generator loss")
    assert_close(losses["d_weight"], logged["train/d_weight"], "adaptive weight")
    assert losses["p_loss"] > 0 and losses["d_weight"] > 0 and losses["quant_loss"] > 0  # every part is at work

    # the autoencoder: same gradients (taming's stay on its weights after the step), same model after it
    assert_same_gradients({n: p.grad for n, p in taming.model.named_parameters()}, our_gradients, "autoencoder")
    # (those weights got ±lr from Adam out of rounding noise, and change nothing: compare what the models compute)
    probe = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        (their_output, their_codes), (our_output, our_codes) = taming.model(probe), ours.model(probe)
        before, _ = model_before(probe)
    assert torch.equal(their_codes.codes, our_codes.codes)
    assert_close(their_output, our_output, "reconstructions after the step", rtol=0, atol=1e-4)
    assert (our_output - before).abs().max() > 100 * 1e-4  # the step moved them far more than that

    # taming's optimizer_idx 1, restated: hinge loss on the updated autoencoder's reconstructions, Adam step
    with torch.no_grad():
        reconstructions, _ = ours.model(images)
    disc = discriminator_before
    d_loss = taming_hinge(disc(images), disc(reconstructions))
    assert_close(losses["disc_loss"], d_loss.detach(), "discriminator loss")
    d_loss.backward()
    assert_same_gradients(
        {n: p.grad for n, p in taming.discriminator.named_parameters()},
        {n: p.grad for n, p in disc.named_parameters()},
        "discriminator",
        tolerance=1e-4,  # its input, the two updated autoencoders' reconstructions, differ by 1e-4 at most
    )
    lr = VQGAN_SETTINGS["learning_rate"]
    torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9)).step()
    # Adam's first step moves each weight by about ±lr whatever its gradient's size: agree to 1% of that
    for (name, theirs), mine in zip(taming.discriminator.named_parameters(), disc.parameters()):
        assert_close(theirs, mine, f"discriminator weight {name} after the step", rtol=0, atol=lr / 100)


# --- the VQGAN-CLIP scripts' step -------------------------------------------------------------------


class RecordingAdam(torch.optim.Adam):
    """Adam that keeps, for each step, its single parameter before the step and that parameter's gradient."""

    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(self, closure=None):
        (z,) = self.param_groups[0]["params"]
        RecordingAdam.steps.append((z.detach().clone(), z.grad.clone()))
        return super().step(closure)


def test_vqgan_clip_step_computes_optimizes_loss_and_gradient(monkeypatch):
    """`AnchorRun` in bench/optimize.py (generate.py's synth, Prompt loss and Adam) against `optimize` on the
    same weights, the same random start and the same cutouts: an image the size of CLIP's input, so every
    crop is the whole image, with the augmentations off in both."""
    bench = bench_script("optimize")
    torch.manual_seed(0)
    model = vqgan.VQGAN(
        {
            "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "resolution": 32},
            "embed_dim": 8,
            "n_embed": 16,
            "quantizer": {},  # taming's: generate.py's case
        }
    ).eval()
    with torch.no_grad():  # spread the codebook so that codes differ visibly
        model.quantize.embedding.weight.normal_()
        model.decoder.conv_out.weight.mul_(20)  # and overshoot [-1, 1], so that the clamp's gradient rule counts
    scorer = clip_rerank.load("clip-micro-32")  # random weights, 32-pixel input
    assert scorer.image_size == (32, 32)
    settings = OptimizeSettings(width=32, height=32, iterations=1, cutn=3, seed=3, augment=Augmentations.none())
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    monkeypatch.setattr(RecordingAdam, "steps", [])

    losses = []
    optimize(model, scorer, [TextPrompt("a red circle")], settings, callback=lambda info: losses.append(info.loss))
    run = bench.AnchorRun(model, scorer, "a red circle", settings, augment=False)
    anchor_loss = run.step()

    with torch.no_grad():
        assert (run.synth() == 1).float().mean() > 0.05  # (clipped pixels)
    (our_z, our_gradient), (their_z, their_gradient) = RecordingAdam.steps
    assert torch.equal(their_z, our_z)  # the same random codes to start from
    assert anchor_loss.item() == pytest.approx(losses[0], rel=1e-5)
    assert their_gradient.abs().max() > 0
    assert_close(their_gradient, our_gradient, "z's gradient", rtol=1e-4, atol=1e-5 * our_gradient.abs().max())
