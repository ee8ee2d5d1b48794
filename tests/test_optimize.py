"""VQGAN-CLIP optimisation: prompts and their losses, cutouts, the straight-through latent, the loop, and
`vqgan-clip optimize` end to end on tiny checkpoints made here (random weights; nothing downloaded)."""

import argparse
import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import clip_rerank
import gpt_prior
import vqgan
from clip_rerank.scorer import Scorer
from gpt_prior.checkpoint import metadata
from gpt_prior.model import GPT, GPTConfig
from imagetext.files import file_sha256
from imagetext.images import open_rgb, pil_to_tensor, read_png_text, save_png
from optimize import (
    Augmentations,
    CodebookSpace,
    Cutouts,
    ImagePrompt,
    NoisePrompt,
    OptimizeSettings,
    Target,
    TextPrompt,
    optimize,
    parse_image_prompt,
    parse_noise_prompt,
    parse_prompts,
    spherical_distance,
)
from vqgan_clip import optimize_command
from vqgan_clip.models import write_demo_models
from vqgan_clip.optimize_command import add_arguments, run

TINY_DDCONFIG = dict(
    ch=32,
    out_ch=3,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
    resamp_with_conv=True,
    in_channels=3,
    resolution=16,
    z_channels=16,
    double_z=False,
)
# A cosine codebook with a factorised lookup, as the emoji VQGAN has: the hardest case for "nearest code".
TINY_VQGAN = {
    "ddconfig": TINY_DDCONFIG,
    "embed_dim": 8,
    "n_embed": 16,
    "quantizer": {"l2_normalize": True, "codebook_dim": 4},
}
MICRO_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}
PLAIN = Augmentations.none()


@pytest.fixture(scope="module")
def tiny_vqgan() -> vqgan.VQGAN:
    torch.manual_seed(0)
    model = vqgan.VQGAN(TINY_VQGAN).eval()
    with torch.no_grad():  # spread the codebook so that codes differ visibly
        model.quantize.embedding.weight.normal_()
    return model


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> Scorer:
    config = tmp_path_factory.mktemp("clip") / "clip-optimize-micro.json"
    config.write_text(json.dumps(MICRO_CLIP))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return clip_rerank.load(str(config))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_vqgan, scorer) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "vqgan": vqgan.save(tiny_vqgan, folder / "vqgan.safetensors"),
        "clip": clip_rerank.save(
            scorer.model, "clip-optimize-micro", folder / "clip.safetensors", model_config=MICRO_CLIP
        ),
    }


def settings(**overrides) -> OptimizeSettings:
    values = dict(width=16, height=16, iterations=3, cutn=4, lr=0.2, augment=PLAIN) | overrides
    return OptimizeSettings(**values)


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def cli_run(checkpoints, out: Path, *argv: str) -> Path:
    """Run `vqgan-clip optimize` on the tiny checkpoints; returns the one run folder it made."""
    before = set(out.iterdir()) if out.exists() else set()
    run(
        cli(
            *argv,
            "--vqgan",
            str(checkpoints["vqgan"]),
            "--clip",
            str(checkpoints["clip"]),
            "--out",
            str(out),
            "--device",
            "cpu",
        )
    )
    (folder,) = set(out.iterdir()) - before
    return folder


# --- prompts ---------------------------------------------------------------------------------------


def test_prompts_parse_weights_negatives_and_stops():
    assert parse_prompts("a red circle") == [TextPrompt("a red circle", 1.0, None)]
    assert parse_prompts("a red circle:2|a blue square:-0.5|a green triangle:1:0.8") == [
        TextPrompt("a red circle", 2.0),
        TextPrompt("a blue square", -0.5),
        TextPrompt("a green triangle", 1.0, 0.8),
    ]
    assert parse_image_prompt("cat.png:0.5:-1") == ImagePrompt(Path("cat.png"), 0.5, -1.0)
    assert parse_noise_prompt("7:-0.25") == NoisePrompt(7, -0.25)


def test_an_existing_image_path_with_a_colon_is_taken_whole(tmp_path):
    path = tmp_path / "a:b.png"
    path.write_bytes(b"")
    assert parse_image_prompt(str(path)) == ImagePrompt(path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "the prompt is empty"),
        ("a red circle|", "empty prompt between '|'"),
        ("a red circle:heavy", "weight 'heavy' in 'a red circle:heavy' is not a number"),
        ("a red circle:1:soon", "stop 'soon' in 'a red circle:1:soon' is not a number"),
        (":2", "has nothing before its weight"),
        ("a red circle:0", "must be a finite non-zero number"),
        ("a red circle:nan", "is NaN"),
    ],
)
def test_bad_prompt_syntax_is_a_one_line_error_naming_the_fix(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        parse_prompts(spec)
    assert "\n" not in str(raised.value)
    if "weight" in message or "stop" in message:
        assert "TEXT[:WEIGHT[:STOP]]" in str(raised.value)


def test_noise_prompt_seed_must_be_an_integer():
    with pytest.raises(ValueError, match="seed 'x' in 'x:1' is not an integer"):
        parse_noise_prompt("x:1")


def test_spherical_distance_is_half_the_squared_angle():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])
    distances = spherical_distance(a, torch.tensor([[5.0, 0.0]]))[:, 0]
    assert torch.allclose(distances, torch.tensor([0.0, (math.pi / 2) ** 2 / 2, math.pi**2 / 2]), atol=1e-4)


def test_negative_weights_repel_and_a_met_stop_passes_no_gradient():
    image = torch.tensor([[1.0, 0.2]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0]])
    pull = torch.autograd.grad(Target("pull", target, 1.0).loss(image), image)[0]
    push = torch.autograd.grad(Target("push", target, -1.0).loss(image), image)[0]
    assert pull[0, 1] > 0 and torch.allclose(push, -pull)  # descent lowers y toward the target, or raises it away
    distance = spherical_distance(image, target).item()
    met = Target("met", target, 1.0, stop=distance + 0.01)
    unmet = Target("unmet", target, 1.0, stop=distance - 0.01)
    assert met.loss(image).item() == pytest.approx(distance)  # the value still counts
    assert torch.count_nonzero(torch.autograd.grad(met.loss(image), image)[0]) == 0
    assert torch.equal(torch.autograd.grad(unmet.loss(image), image)[0], pull)
    pushed_far = Target("far enough", target, -1.0, stop=distance - 0.01)  # a negative prompt stops once far away
    assert torch.count_nonzero(torch.autograd.grad(pushed_far.loss(image), image)[0]) == 0


# --- cutouts ---------------------------------------------------------------------------------------


def test_a_plain_cutout_of_an_image_its_own_size_is_the_image():
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    cutouts = Cutouts((16, 16), cutn=3, augment=PLAIN)(image, torch.Generator().manual_seed(0))
    assert torch.allclose(cutouts, image.expand(3, -1, -1, -1), atol=1e-5)


def test_cutouts_are_seeded_per_cutout_and_differentiable():
    image = (torch.rand(1, 3, 40, 48) * 2 - 1).requires_grad_(True)
    make = Cutouts((16, 16), cutn=6, cut_pow=1.0, augment=Augmentations(probability=1.0))
    first = make(image, torch.Generator().manual_seed(1))
    assert first.shape == (6, 3, 16, 16)
    assert torch.equal(first, make(image, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, make(image, torch.Generator().manual_seed(2)))
    flat = first.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(6) for j in range(i))  # each its own view
    first.sum().backward()
    assert image.grad.abs().sum() > 0


# --- latent ----------------------------------------------------------------------------------------


def test_nearest_code_is_the_quantizers_own(tiny_vqgan):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = tiny_vqgan.encode_codes(images)
        z = tiny_vqgan.quantize.project_in(torch.movedim(tiny_vqgan.quant_conv(tiny_vqgan.encoder(images)), 1, -1))
    space = CodebookSpace(tiny_vqgan)
    assert torch.equal(space.nearest(torch.movedim(z, -1, 1)), expected)
    decoded = tiny_vqgan.decode(space.decoder_input(space.embed(expected)))
    assert torch.allclose(decoded.clamp(-1, 1), tiny_vqgan.decode_codes(expected), atol=1e-5)


def test_a_gumbel_vqgans_latent_is_its_embedding(scorer):
    torch.manual_seed(0)
    model = vqgan.VQGAN({**TINY_VQGAN, "quantizer": {"kind": "gumbel"}}).eval()
    codes = torch.randint(16, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    space = CodebookSpace(model)
    assert torch.equal(space.nearest(space.embed(codes)), codes)
    assert torch.equal(space.decoder_input(space.embed(codes)), model.quantize.embed_codes(codes))
    assert len(optimize(model, scorer, parse_prompts("x"), settings(iterations=1)).losses) == 1


def test_straight_through_quantiser_decodes_codes_and_passes_gradients(tiny_vqgan):
    space = CodebookSpace(tiny_vqgan)
    z = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    quantized = space.straight_through(z)
    assert torch.allclose(quantized.detach(), space.embed(space.nearest(z)), atol=1e-6)  # forward: real code vectors
    weights = torch.randn(quantized.shape)
    (quantized * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # backward: identity


# --- the loop --------------------------------------------------------------------------------------


def test_loss_falls_over_a_few_steps(tiny_vqgan, scorer):
    result = optimize(tiny_vqgan, scorer, parse_prompts("a red circle"), settings(iterations=12))
    assert len(result.losses) == 12 and not result.interrupted
    assert result.losses[-1] < result.losses[0] - 0.05  # a random CLIP plateaus near 1.18 from 1.30
    assert result.image.shape == (3, 16, 16) and result.image.abs().max() <= 1
    assert not torch.equal(result.codes, result.initial_codes)


def test_the_same_seed_gives_the_same_image(tiny_vqgan, scorer):
    prompts = [*parse_prompts("a red circle|a blue square:-0.5"), NoisePrompt(3, 0.2)]
    run_settings = settings(seed=5, augment=Augmentations())
    first = optimize(tiny_vqgan, scorer, prompts, run_settings)
    again = optimize(tiny_vqgan, scorer, prompts, run_settings)
    other = optimize(tiny_vqgan, scorer, prompts, settings(seed=6, augment=Augmentations()))
    assert torch.equal(first.image, again.image) and first.losses == again.losses
    assert not torch.equal(first.initial_codes, other.initial_codes)


def test_channels_last_changes_the_layout_not_the_run(tiny_vqgan, scorer):
    """The decoder in channels_last layout gives the run of the usual layout (losses and codes; pixels
    within float tolerance), and the VQGAN's weights are back in the usual layout afterwards."""
    prompts = parse_prompts("a red circle")
    plain = optimize(tiny_vqgan, scorer, prompts, settings(seed=5))
    seen_layouts = []
    last = optimize(
        tiny_vqgan,
        scorer,
        prompts,
        settings(seed=5, channels_last=True),
        callback=lambda info: seen_layouts.append(
            tiny_vqgan.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        ),
    )
    assert seen_layouts == [True, True, True]
    assert torch.equal(plain.codes, last.codes) and plain.losses == pytest.approx(last.losses, rel=1e-5)
    assert torch.allclose(plain.image, last.image, atol=1e-5)
    assert all(parameter.is_contiguous() for parameter in tiny_vqgan.parameters())


@pytest.mark.slow
def test_a_compiled_run_is_the_eager_run(tiny_vqgan, scorer):
    """compile=True (decoder and CLIP's image tower through torch.compile) changes the speed, not the run:
    the same codes and losses. On copies: compiling is in place and would stay with the shared models."""
    prompts = parse_prompts("a red circle")
    eager = optimize(tiny_vqgan, scorer, prompts, settings(seed=5))
    vqgan_copy, scorer_copy = copy.deepcopy(tiny_vqgan), copy.deepcopy(scorer)
    compiled = optimize(vqgan_copy, scorer_copy, prompts, settings(seed=5, compile=True))
    assert vqgan_copy.decoder._compiled_call_impl is not None
    assert torch.equal(eager.codes, compiled.codes) and eager.losses == pytest.approx(compiled.losses, rel=1e-5)
    assert torch.allclose(eager.image, compiled.image, atol=1e-4)


def test_a_keyboard_interrupt_still_returns_the_current_image(tiny_vqgan, scorer):
    seen = []

    def interrupt_at_step_two(info):
        seen.append(info.image)
        if info.step == 2:
            raise KeyboardInterrupt

    result = optimize(
        tiny_vqgan, scorer, parse_prompts("a red circle"), settings(iterations=50), callback=interrupt_at_step_two
    )
    assert result.interrupted and len(result.losses) == 3
    assert result.image.shape == (3, 16, 16)


def test_starts_from_given_codes_and_from_an_image(tiny_vqgan, scorer):
    codes = torch.randint(16, (4, 4), generator=torch.Generator().manual_seed(0))
    from_codes = optimize(tiny_vqgan, scorer, parse_prompts("x"), settings(init="codes"), init_codes=codes)
    assert torch.equal(from_codes.initial_codes, codes.repeat_interleave(2, 0).repeat_interleave(2, 1))  # 4×4 -> 8×8
    image = torch.rand(3, 20, 16) * 2 - 1
    from_image = optimize(tiny_vqgan, scorer, parse_prompts("x"), settings(init="image"), init_image=image)
    assert torch.equal(from_image.initial_codes, tiny_vqgan.encode_codes(image[None, :, 2:18])[0])
    with pytest.raises(ValueError, match="init 'image' needs init_image"):
        optimize(tiny_vqgan, scorer, parse_prompts("x"), settings(init="image"))


def test_image_prompts_embed_their_views(tiny_vqgan, scorer, tmp_path):
    path = save_png(torch.zeros(3, 24, 24), tmp_path / "prompt.png")
    result = optimize(tiny_vqgan, scorer, [ImagePrompt(path, 1.0)], settings(iterations=2))
    assert len(result.losses) == 2
    with pytest.raises(FileNotFoundError, match="image prompt .*missing.png not found"):
        optimize(tiny_vqgan, scorer, [ImagePrompt(tmp_path / "missing.png")], settings())


# --- the command -----------------------------------------------------------------------------------


def test_cli_writes_image_frames_video_and_run_json_without_overwriting(checkpoints, tmp_path, capsys):
    out = tmp_path / "runs"
    folder = cli_run(
        checkpoints,
        out,
        "a red circle:1|a blue square:-0.5",
        "--iterations",
        "3",
        "--cutn",
        "2",
        "--seed",
        "4",
        "--save-every",
        "1",
        "--video",
        "--noise-prompt",
        "1:0.1",
    )
    assert folder.name == "a-red-circle-1-a-blue-square-0-5"
    record = json.loads((folder / "run.json").read_text())
    assert record["prompt"] == "a red circle:1|a blue square:-0.5" and record["seed"] == 4
    assert len(record["losses"]) == record["steps"] == 3 and not record["interrupted"]
    assert record["settings"]["cutn"] == 2
    assert record["checkpoints"]["vqgan"] == {
        "path": str(checkpoints["vqgan"].resolve()),
        "sha256": file_sha256(checkpoints["vqgan"]),
    }
    assert record["checkpoints"]["clip"]["sha256"] == file_sha256(checkpoints["clip"])
    assert record["prompts"] == ["a red circle:1", "a blue square:-0.5", "noise 1:0.1"]
    chunks = read_png_text(folder / "final.png")
    assert chunks["prompt"] == record["prompt"] and json.loads(chunks["seed"]) == 4
    assert json.loads(chunks["settings"]) == record["settings"]
    assert open_rgb(folder / "final.png").size == (16, 16)
    assert len(list((folder / "frames").glob("*.png"))) == 4  # steps 0, 1, 2 and the end
    videos = list(folder.glob("video.*"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    said = capsys.readouterr().out
    assert ("(ffmpeg)" in said) == (videos[0].suffix == ".mp4") and ("Pillow GIF" in said) == (
        videos[0].suffix == ".gif"
    )

    again = cli_run(checkpoints, out, "a red circle:1|a blue square:-0.5", "--iterations", "1", "--cutn", "2")
    assert again.name == folder.name + "-2" and (folder / "final.png").is_file()


def test_video_without_ffmpeg_or_when_it_fails_is_a_gif(tmp_path, monkeypatch, capsys):
    frames = []
    for index, shade in enumerate((-1.0, 0.0, 1.0)):
        frames.append(save_png(torch.full((3, 8, 8), shade), tmp_path / "frames" / f"{index:05d}.png"))
    monkeypatch.setattr(optimize_command.shutil, "which", lambda name: None)
    assert optimize_command.write_video(frames, tmp_path).name == "video.gif"
    assert "ffmpeg is not on PATH" in capsys.readouterr().out
    with Image.open(tmp_path / "video.gif") as gif:
        assert gif.n_frames == 3
    (tmp_path / "video.gif").unlink()

    def failing_ffmpeg(command, **kwargs):
        raise optimize_command.subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(optimize_command.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(optimize_command.subprocess, "run", failing_ffmpeg)
    assert optimize_command.write_video(frames, tmp_path).name == "video.gif"
    assert "ffmpeg failed" in capsys.readouterr().out and not (tmp_path / "video.mp4").exists()


def test_cli_same_seed_same_png(checkpoints, tmp_path):
    runs = [
        cli_run(checkpoints, tmp_path / "runs", "a red circle", "--iterations", "2", "--cutn", "2", "--seed", "9")
        for _ in range(2)
    ]
    first, second = (pil_to_tensor(open_rgb(folder / "final.png")) for folder in runs)
    assert torch.equal(first, second)


def test_cli_rounds_a_size_the_vqgan_cannot_take_with_a_notice(checkpoints, tmp_path, capsys):
    folder = cli_run(
        checkpoints, tmp_path / "runs", "a red circle", "--iterations", "1", "--cutn", "2", "--size", "19", "14"
    )
    assert "--size 19 14 is not a multiple of the VQGAN's downsample factor 2; using 20 14" in capsys.readouterr().out
    assert open_rgb(folder / "final.png").size == (20, 14)


def test_cli_ctrl_c_still_writes_the_image_and_run_json(checkpoints, tmp_path, monkeypatch):
    calls = []
    encode_images = Scorer.encode_images

    def interrupted_on_third_step(self, images, *, grad=False):
        calls.append(grad)
        if calls.count(True) == 3:
            raise KeyboardInterrupt
        return encode_images(self, images, grad=grad)

    monkeypatch.setattr(Scorer, "encode_images", interrupted_on_third_step)
    folder = cli_run(checkpoints, tmp_path / "runs", "a red circle", "--iterations", "100", "--cutn", "2")
    record = json.loads((folder / "run.json").read_text())
    assert record["interrupted"] and record["steps"] == 2
    assert json.loads(read_png_text(folder / "final.png")["interrupted"]) is True


def test_cli_starts_from_an_init_image(checkpoints, tiny_vqgan, tmp_path):
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    path = save_png(image, tmp_path / "start.png")
    folder = cli_run(
        checkpoints,
        tmp_path / "runs",
        "a red circle",
        "--init-image",
        str(path),
        "--iterations",
        "1",
        "--cutn",
        "2",
        "--lr",
        "1e-9",
    )
    record = json.loads((folder / "run.json").read_text())
    expected = tiny_vqgan.encode_codes(pil_to_tensor(open_rgb(path))[None])[0]
    assert record["init"] == "image" and torch.equal(torch.tensor(record["codes"]), expected)


def test_cli_starts_from_a_gpt_prior_sample(checkpoints, tmp_path):
    tokenizer = gpt_prior.train_tokenizer(["a red circle", "a blue square"], vocab_size=64)
    config = GPTConfig(
        text_vocab_size=tokenizer.vocab_size,
        text_len=8,
        image_vocab_size=16,
        image_grid=(4, 4),
        n_layer=1,
        n_head=2,
        n_embd=32,
    )
    torch.manual_seed(0)
    model = GPT(config)
    path = tmp_path / "gpt.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "gpt_prior": metadata(config, tokenizer, str(checkpoints["vqgan"]), file_sha256(checkpoints["vqgan"]), {}),
        },
        path,
    )
    # No --vqgan: the prior's own VQGAN is used. The size follows its 4×4 grid: 8×8 pixels.
    args = cli(
        "a red circle",
        "--init",
        "gpt",
        "--gpt",
        str(path),
        "--clip",
        str(checkpoints["clip"]),
        "--iterations",
        "1",
        "--cutn",
        "2",
        "--lr",
        "1e-9",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    )
    run(args)
    (folder,) = (tmp_path / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    bundle = gpt_prior.load(path)
    expected = gpt_prior.sample(
        bundle.model, bundle.text_tokens(["a red circle"]), 1, generator=torch.Generator().manual_seed(3)
    )[0]
    assert record["init"] == "gpt"
    assert record["checkpoints"]["gpt"] == {"path": str(path.resolve()), "sha256": file_sha256(path)}
    assert record["checkpoints"]["vqgan"]["path"] == str(checkpoints["vqgan"].resolve())
    assert torch.equal(torch.tensor(record["codes"]), expected)
    assert open_rgb(folder / "final.png").size == (8, 8)


def test_cli_loads_a_taming_vqgan(checkpoints, tmp_path):
    torch.manual_seed(0)
    taming_vqgan = vqgan.VQGAN({**TINY_VQGAN, "quantizer": {}})  # taming's plain VQ codebook
    torch.save({"state_dict": taming_vqgan.state_dict()}, tmp_path / "last.ckpt")
    config = {
        "model": {
            "target": "taming.models.vqgan.VQModel",
            "params": {"embed_dim": 8, "n_embed": 16, "ddconfig": TINY_DDCONFIG},
        }
    }
    (tmp_path / "model.yaml").write_text(json.dumps(config))  # JSON is YAML
    args = cli(
        "a red circle",
        "--vqgan-config",
        str(tmp_path / "model.yaml"),
        "--vqgan-checkpoint",
        str(tmp_path / "last.ckpt"),
        "--clip",
        str(checkpoints["clip"]),
        "--iterations",
        "1",
        "--cutn",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
    )
    run(args)
    (folder,) = (tmp_path / "runs").iterdir()
    assert json.loads((folder / "run.json").read_text())["checkpoints"]["vqgan"] == {
        "config": str(tmp_path / "model.yaml"),
        "path": str(tmp_path / "last.ckpt"),
        "sha256": file_sha256(tmp_path / "last.ckpt"),
    }


def test_cli_demo_models_are_used_when_asked(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli("a red circle", "--iterations", "1", "--cutn", "2", "--device", "cpu", "--demo-models")
    with pytest.raises(FileNotFoundError, match="runs/demo/models.json .* not found; run `vqgan-clip demo --train`"):
        run(args)
    write_demo_models("runs/demo", vqgan=checkpoints["vqgan"], clip=checkpoints["clip"], gpt=checkpoints["vqgan"])
    run(args)
    (folder,) = (tmp_path / "runs" / "optimize").iterdir()
    assert (
        Path(json.loads((folder / "run.json").read_text())["checkpoints"]["clip"]["spec"]).resolve()
        == checkpoints["clip"].resolve()
    )


@pytest.mark.parametrize(
    "argv, error, message",
    [
        (["a:b"], ValueError, "weight 'b' in 'a:b' is not a number"),
        (["x", "--init", "image"], ValueError, "--init image needs --init-image PATH"),
        (["x", "--init-image", "missing.png"], FileNotFoundError, "--init-image missing.png not found"),
        (["x", "--vqgan-config", "model.yaml"], ValueError, "needs both --vqgan-config and --vqgan-checkpoint"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(checkpoints, tmp_path, argv, error, message):
    with pytest.raises(error, match=re.escape(message)) as raised:
        cli_run(checkpoints, tmp_path / "runs", *argv)
    assert "\n" not in str(raised.value)
