"""VQGAN model half: taming-compatible layout and loading, quantisers, codebook statistics, PatchGAN
losses and the LPIPS loss. Tiny models only; nothing is downloaded."""

import argparse
import math
import sys
import types

import pytest
import torch
import yaml
from torch import nn

from vqgan.discriminator import (
    NLayerDiscriminator,
    adaptive_disc_weight,
    discriminator_loss,
    generator_loss,
    hinge_d_loss,
    vanilla_d_loss,
)
from vqgan.model import VQGAN, AutoencoderConfig, VQGANConfig
from vqgan.perceptual import LPIPSLoss
from vqgan.quantize import CodebookUsage, GumbelQuantizer, QuantizerConfig, VectorQuantizer, codebook_usage, perplexity
from vqgan.taming import from_taming

TINY_DDCONFIG = dict(
    ch=32,
    out_ch=3,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
    resamp_with_conv=True,
    in_channels=3,
    resolution=16,
    z_channels=16,
    double_z=False,
)
TINY = {"ddconfig": TINY_DDCONFIG, "embed_dim": 8, "n_embed": 16}


def images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_model(**quantizer) -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(VQGANConfig.from_dict({**TINY, "quantizer": quantizer}))


# --- taming's key layout, written out from taming's naming (not from this project's modules) ---


def conv(name, cout, cin, k):
    return {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}


def norm(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,)}


def resnet(name, cin, cout):
    keys = {
        **norm(f"{name}.norm1", cin),
        **conv(f"{name}.conv1", cout, cin, 3),
        **norm(f"{name}.norm2", cout),
        **conv(f"{name}.conv2", cout, cout, 3),
    }
    if cin != cout:
        keys.update(conv(f"{name}.nin_shortcut", cout, cin, 1))
    return keys


def attn(name, c):
    keys = norm(f"{name}.norm", c)
    for projection in ("q", "k", "v", "proj_out"):
        keys.update(conv(f"{name}.{projection}", c, c, 1))
    return keys


def mid(name, c):
    return {**resnet(f"{name}.block_1", c, c), **attn(f"{name}.attn_1", c), **resnet(f"{name}.block_2", c, c)}


def taming_tiny_layout() -> dict[str, tuple]:
    """taming's VQModel keys and shapes for TINY: levels at 16 px (32 ch) and 8 px (64 ch, attention)."""
    return {
        **conv("encoder.conv_in", 32, 3, 3),
        **resnet("encoder.down.0.block.0", 32, 32),
        **conv("encoder.down.0.downsample.conv", 32, 32, 3),
        **resnet("encoder.down.1.block.0", 32, 64),
        **attn("encoder.down.1.attn.0", 64),
        **mid("encoder.mid", 64),
        **norm("encoder.norm_out", 64),
        **conv("encoder.conv_out", 16, 64, 3),
        **conv("decoder.conv_in", 64, 16, 3),
        **mid("decoder.mid", 64),
        **resnet("decoder.up.1.block.0", 64, 64),
        **resnet("decoder.up.1.block.1", 64, 64),
        **attn("decoder.up.1.attn.0", 64),
        **attn("decoder.up.1.attn.1", 64),
        **conv("decoder.up.1.upsample.conv", 64, 64, 3),
        **resnet("decoder.up.0.block.0", 64, 32),
        **resnet("decoder.up.0.block.1", 32, 32),
        **norm("decoder.norm_out", 32),
        **conv("decoder.conv_out", 3, 32, 3),
        **conv("quant_conv", 8, 16, 1),
        **conv("post_quant_conv", 16, 8, 1),
        "quantize.embedding.weight": (16, 8),
    }


def taming_discriminator_layout(ndf: int = 8) -> dict[str, tuple]:
    """taming's NLayerDiscriminator with n_layers=2: conv+bias, lrelu, (conv, BN, lrelu) × 2, conv+bias."""

    def bn(name, c):
        return {
            f"{name}.weight": (c,),
            f"{name}.bias": (c,),
            f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": (),
        }

    return {
        **conv("main.0", ndf, 3, 4),
        "main.2.weight": (2 * ndf, ndf, 4, 4),
        **bn("main.3", 2 * ndf),
        "main.5.weight": (4 * ndf, 2 * ndf, 4, 4),
        **bn("main.6", 4 * ndf),
        **conv("main.8", 1, 4 * ndf, 4),
    }


def random_state(layout: dict[str, tuple], seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.tensor(5) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g) * 0.1)
        for k, shape in layout.items()
    }


def test_taming_key_layout_matches_and_loads_strictly():
    model = tiny_model()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == taming_tiny_layout()
    state = random_state(taming_tiny_layout())
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.decoder.up[1].attn[1].proj_out.weight, state["decoder.up.1.attn.1.proj_out.weight"])


TAMING_YAML = """
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 16
    ddconfig:
      double_z: false
      z_channels: 16
      resolution: 16
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: [8]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_num_layers: 2
        disc_ndf: 8
        disc_start: 0
        disc_weight: 0.8
        codebook_weight: 1.0
"""


@pytest.fixture
def lightning1_callback_class(monkeypatch):
    """A class pickled as pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint, the dict key
    Lightning 1.x checkpoints (all public taming ones) keep callback states under."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = cls
    return cls


def write_taming_run(tmp_path, callback_class, state):
    (tmp_path / "model.yaml").write_text(TAMING_YAML)
    checkpoint = {
        "epoch": 4,
        "global_step": 1000,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {callback_class: {"best_model_score": torch.tensor(0.1), "best_model_path": "x.ckpt"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]}],
        "lr_schedulers": [],
        "state_dict": state,
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    return tmp_path / "model.yaml", tmp_path / "last.ckpt"


def taming_checkpoint_state():
    state = random_state(taming_tiny_layout())
    state.update({f"loss.discriminator.{k}": v for k, v in random_state(taming_discriminator_layout(), seed=2).items()})
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    return state


def test_from_taming_loads_model_yaml_and_lightning1_checkpoint(tmp_path, lightning1_callback_class):
    state = taming_checkpoint_state()
    config_yaml, ckpt = write_taming_run(tmp_path, lightning1_callback_class, state)

    model = from_taming(config_yaml, ckpt)
    assert not model.training and model.codebook_size == 16 and model.downsample_factor == 2
    assert torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])
    assert model.encode_codes(images()).shape == (2, 8, 8)

    model, discriminator = from_taming(config_yaml, ckpt, keep_discriminator=True)
    assert torch.equal(discriminator.main[6].running_var, state["loss.discriminator.main.6.running_var"])
    assert discriminator(images(size=32)).shape == (2, 1, 6, 6)


def test_from_taming_takes_the_first_stage_of_a_taming_transformer(tmp_path):
    """COCO, FacesHQ and S-FLCKR are Net2NetTransformer runs: the VQGAN is params.first_stage_config."""
    first_stage = yaml.safe_load(TAMING_YAML)["model"]
    transformer = {
        "target": "taming.models.cond_transformer.Net2NetTransformer",
        "params": {"first_stage_config": first_stage},
    }
    (tmp_path / "project.yaml").write_text(yaml.safe_dump({"model": transformer}))
    state = {f"first_stage_model.{k}": v for k, v in taming_checkpoint_state().items()}
    state |= {
        "transformer.tok_emb.weight": torch.zeros(4, 2),
        "cond_stage_model.encoder.conv_in.weight": torch.zeros(1),
    }
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    model = from_taming(tmp_path / "project.yaml", tmp_path / "last.ckpt")
    assert torch.equal(model.quantize.embedding.weight, state["first_stage_model.quantize.embedding.weight"])


def test_from_taming_names_missing_and_unexpected_keys(tmp_path, lightning1_callback_class):
    state = taming_checkpoint_state()
    del state["decoder.conv_out.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    config_yaml, ckpt = write_taming_run(tmp_path, lightning1_callback_class, state)
    with pytest.raises(ValueError) as error:
        from_taming(config_yaml, ckpt)
    lines = str(error.value).splitlines()
    assert "missing keys: decoder.conv_out.bias" in lines
    assert "unexpected keys: encoder.extra.weight" in lines


def test_from_taming_refuses_other_pickled_objects_naming_them(tmp_path):
    (tmp_path / "model.yaml").write_text(TAMING_YAML)
    torch.save({"hparams": argparse.Namespace(lr=1.0), "state_dict": taming_checkpoint_state()}, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match=r"argparse\.Namespace, so it was refused") as error:
        from_taming(tmp_path / "model.yaml", tmp_path / "last.ckpt")
    assert "weights_only=False" not in str(error.value)


def test_encode_decode_shapes_and_decode_codes_range():
    model = tiny_model().eval()
    with torch.no_grad():
        model.decoder.conv_out.weight.mul_(100)  # make the unbounded decoder overshoot [-1, 1]
    x = images()
    codes = model.encode_codes(x)
    assert codes.dtype == torch.long and codes.shape == (2, 8, 8)
    assert 0 <= codes.min() and codes.max() < model.codebook_size
    reconstruction, quantized = model(x)
    assert reconstruction.shape == x.shape and reconstruction.abs().max() > 1
    decoded = model.decode_codes(codes)
    assert decoded.shape == x.shape and decoded.min() >= -1 and decoded.max() <= 1
    torch.testing.assert_close(decoded, reconstruction.clamp(-1, 1), atol=1e-3, rtol=0)
    assert quantized.z_q.shape == (2, 8, 8, 8) and quantized.loss.ndim == 0
    with pytest.raises(ValueError, match="outside this codebook"):
        model.decode_codes(torch.full((1, 8, 8), 16))


def test_straight_through_gradient_reaches_encoder():
    for options in ({}, {"l2_normalize": True, "codebook_dim": 4}):
        model = tiny_model(**options)
        reconstruction, quantized = model(images())
        (reconstruction.abs().mean() + quantized.loss).backward()
        assert model.encoder.conv_in.weight.grad.abs().sum() > 0
        assert model.quantize.embedding.weight.grad.abs().sum() > 0


def test_legacy_flag_moves_beta_between_the_loss_terms():
    grads = {}
    for legacy in (True, False):
        quantizer = VectorQuantizer(QuantizerConfig(beta=0.25, legacy=legacy), 2, 1)
        with torch.no_grad():
            quantizer.embedding.weight.copy_(torch.tensor([[0.0], [10.0]]))
        z = torch.ones(1, 1, 1, 1, requires_grad=True)
        quantizer(z).loss.backward()
        grads[legacy] = (z.grad.item(), quantizer.embedding.weight.grad[0].item())
    assert grads[True] == pytest.approx((2.0, -0.5))  # commitment weight 1, codebook weight β
    assert grads[False] == pytest.approx((0.5, -2.0))  # codebook weight 1, commitment weight β


def test_indivisible_sizes_raise_and_say_which_sizes_work():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"15×16 .* multiple of 2 .*height 14 or 16"):
        model.encode(images(size=16)[..., :15, :])
    with pytest.raises(ValueError, match=r"resolution 30 .* 28 or 32"):
        AutoencoderConfig.from_dict({**TINY_DDCONFIG, "ch_mult": [1, 2, 2], "resolution": 30})


def test_config_with_unknown_key_names_it():
    with pytest.raises(ValueError, match=r"ddconfig: unknown key\(s\) chmult; known keys are ch, out_ch, ch_mult"):
        VQGANConfig.from_dict({**TINY, "ddconfig": {**TINY_DDCONFIG, "chmult": [1, 2]}})
    with pytest.raises(ValueError, match=r"quantizer: unknown key\(s\) decay"):
        VQGANConfig.from_dict({**TINY, "quantizer": {"decay": 0.9}})
    config = VQGANConfig.from_dict({**TINY, "quantizer": {"ema": True}})
    assert VQGANConfig.from_dict(config.to_dict()) == config


def test_usage_and_perplexity_on_hand_made_codes():
    two_codes = torch.tensor([[0, 0], [1, 1]])
    assert codebook_usage(two_codes, 4).item() == pytest.approx(0.5)
    assert perplexity(two_codes, 4).item() == pytest.approx(2.0)
    assert perplexity(torch.arange(4), 4).item() == pytest.approx(4.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert perplexity(torch.tensor([0, 0, 0, 1]), 4).item() == pytest.approx(math.exp(entropy))

    accumulator = CodebookUsage(8)
    accumulator.update(torch.tensor([[0, 1]]))
    accumulator.update(torch.tensor([[2, 3]]))
    assert accumulator.compute() == pytest.approx({"usage": 0.5, "perplexity": 4.0})
    accumulator.reset()
    accumulator.update(torch.tensor([5, 5]))
    assert accumulator.compute() == pytest.approx({"usage": 0.125, "perplexity": 1.0})


def restarting_quantizer(seed: int) -> VectorQuantizer:
    quantizer = VectorQuantizer(
        QuantizerConfig(restart_unused_after=2, restart_buffer_size=32, seed=seed), 8, 2
    ).train()
    with torch.no_grad():  # codes 4..7 sit far from every input, so they are never picked
        near = [[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]]
        quantizer.embedding.weight.copy_(torch.tensor(near + [[100.0, 100.0]] * 4))
    return quantizer


def test_dead_code_restart_revives_unused_codes_deterministically():
    z = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    inputs = z.permute(0, 2, 3, 1).reshape(-1, 2)
    quantizer = restarting_quantizer(seed=0)
    for _ in range(2):
        assert set(quantizer(z).codes.unique().tolist()) <= {0, 1, 2, 3}
    resumed = restarting_quantizer(seed=0)
    resumed.load_state_dict(quantizer.state_dict())  # buffers carry step, usage and recent vectors
    output = quantizer(z)  # third step: codes unused for 2 steps are restarted before the lookup
    revived = quantizer.embedding.weight[4:]
    assert all((inputs == row).all(dim=1).any() for row in revived)  # each is a recent encoder vector
    assert len(set(output.codes.unique().tolist()) - {0, 1, 2, 3}) > 0
    resumed(z)
    assert torch.equal(resumed.embedding.weight, quantizer.embedding.weight)

    other_seed = restarting_quantizer(seed=1)
    for _ in range(3):
        other_seed(z)
    assert not torch.equal(other_seed.embedding.weight[4:], revived)


def test_ema_update_moves_codes_toward_assigned_inputs_and_only_in_training():
    quantizer = VectorQuantizer(QuantizerConfig(ema=True, ema_decay=0.5), 2, 2)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        quantizer.ema_embed_sum.copy_(quantizer.embedding.weight)
    z = torch.full((1, 2, 2, 2), 1.0) + 0.1 * torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    target = z.mean(dim=(0, 2, 3))
    quantizer.eval()(z)
    assert torch.equal(quantizer.embedding.weight[0], torch.zeros(2))
    quantizer.train()
    distances = []
    for _ in range(3):
        distances.append((quantizer.embedding.weight[0] - target).norm().item())
        assert (quantizer(z).codes == 0).all()
    distances.append((quantizer.embedding.weight[0] - target).norm().item())
    assert distances == sorted(distances, reverse=True) and distances[-1] < 0.2 * distances[0]
    torch.testing.assert_close(quantizer.embedding.weight[1], torch.tensor([10.0, 10.0]), atol=0.01, rtol=0)
    assert not quantizer.embedding.weight.requires_grad
    assert {"ema_cluster_size", "ema_embed_sum"} <= set(quantizer.state_dict())


def test_all_codebook_options_together_train_and_keep_their_keys():
    model = tiny_model(l2_normalize=True, codebook_dim=4, ema=True, restart_threshold=0.5, restart_unused_after=3)
    for _ in range(2):
        reconstruction, quantized = model(images())
        (reconstruction.abs().mean() + quantized.loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    keys = set(model.state_dict())
    assert {
        "quantize.project_in.weight",
        "quantize.project_out.weight",
        "quantize.ema_cluster_size",
        "quantize.steps_since_used",
        "quantize.recent_vectors",
    } <= keys
    torch.testing.assert_close(model.quantize.codebook().norm(dim=1), torch.ones(16))


def test_channels_last_and_bf16_autocast_run():
    model = tiny_model().eval()
    x = images()
    with torch.no_grad():
        reference, _ = model(x)
        channels_last, _ = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(channels_last, reference, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reconstruction, quantized = model(x)
    assert quantized.codes.dtype == torch.long and torch.isfinite(reconstruction).all()


def test_gumbel_quantizer_loads_taming_keys_and_encodes_by_argmax():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_dict({**TINY, "quantizer": {"kind": "gumbel"}}))
    layout = {k: v for k, v in taming_tiny_layout().items() if not k.startswith("quantize.")}
    layout.update(
        {"quantize.proj.weight": (16, 8, 1, 1), "quantize.proj.bias": (16,), "quantize.embed.weight": (16, 8)}
    )
    model.load_state_dict(random_state(layout), strict=True)
    assert isinstance(model.quantize, GumbelQuantizer)
    x = images()
    model.eval()
    logits = model.quantize.proj(model.quant_conv(model.encoder(x)))
    codes = model.encode_codes(x)
    assert torch.equal(codes, logits.argmax(dim=1)) and torch.equal(codes, model.encode_codes(x))
    assert model.decode_codes(codes).shape == x.shape
    reconstruction, quantized = model.train()(x)
    (reconstruction.abs().mean() + quantized.loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_discriminator_layout_and_losses():
    discriminator = NLayerDiscriminator()
    expected = [
        "main.0.weight",
        "main.0.bias",
        "main.2.weight",
        "main.5.weight",
        "main.8.weight",
        "main.11.weight",
        "main.11.bias",
    ]
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected += [f"main.{i}.{p}" for i in (3, 6, 9) for p in batch_norm]
    assert sorted(discriminator.state_dict()) == sorted(expected)
    assert discriminator(images(size=32)).shape == (2, 1, 2, 2)
    assert discriminator.main[3].weight.std().item() == pytest.approx(0.02, abs=0.01)

    assert hinge_d_loss(torch.tensor([2.0]), torch.tensor([-2.0])).item() == 0.0
    assert hinge_d_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(1.0)
    assert vanilla_d_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    assert discriminator_loss("vanilla") is vanilla_d_loss
    with pytest.raises(ValueError, match="use one of hinge, vanilla"):
        discriminator_loss("wgan")
    assert generator_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_adaptive_disc_weight_is_the_clamped_detached_gradient_ratio():
    last_layer = nn.Parameter(torch.ones(4))
    rec = (last_layer * torch.tensor([3.0, 0, 0, 4.0])).sum()  # gradient norm 5
    gan = (last_layer * torch.tensor([0, 2.0, 0, 0])).sum()  # gradient norm 2
    weight = adaptive_disc_weight(rec, gan, last_layer)
    assert weight.item() == pytest.approx(5 / (2 + 1e-4)) and not weight.requires_grad
    assert adaptive_disc_weight(rec, (last_layer * 0).sum(), last_layer, clamp=100.0).item() == 100.0


def test_lpips_without_vgg_weights_names_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        LPIPSLoss()
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "perceptual_weight: 0" in message and "\n" not in message


@pytest.mark.slow  # builds torchvision's VGG16 (138M parameters) twice
def test_lpips_random_backbone_forward_backward_and_local_weights(tmp_path):
    torch.manual_seed(0)
    loss = LPIPSLoss(backbone_weights="random").train()
    assert not loss.net.training
    x, y = images(seed=1), images(seed=2).requires_grad_()
    value = loss(x, y)
    value.backward()
    assert value.item() > 0 and y.grad.abs().sum() > 0
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)

    # a torchvision-style VGG16 file (features.{i}.*) lands in lpips' slices at the same indices
    slices = [loss.net.net.slice1, loss.net.net.slice2, loss.net.net.slice3, loss.net.net.slice4, loss.net.net.slice5]
    weights = {f"features.{k}": torch.randn_like(v) for s in slices for k, v in s.state_dict().items()}
    torch.save(weights, tmp_path / "vgg16.pth")
    local = LPIPSLoss(backbone_weights=tmp_path / "vgg16.pth")
    assert torch.equal(local.net.net.slice5.get_submodule("28").weight, weights["features.28.weight"])
    assert torch.equal(local.net.net.slice1.get_submodule("0").bias, weights["features.0.bias"])
