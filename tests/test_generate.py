"""`vqgan-clip generate` end to end on tiny checkpoints: files, names, metadata, sort order, seeds, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clip_rerank
import vqgan
import vqgan_clip.models
from gpt_prior import SamplingSettings
from gpt_prior.checkpoint import metadata
from gpt_prior.model import GPT, GPTConfig
from gpt_prior.tokenizer import train_tokenizer
from imagetext.files import file_sha256, safe_name
from imagetext.images import read_png_text, tensor_to_array
from imagetext.shapes import scene_at
from vqgan_clip import generate
from vqgan_clip.cli import main
from vqgan_clip.models import ModelChoice, demo_models, load_models, write_demo_models

PROMPT = "a small red circle above a large blue square"
IMAGE_SIZE = 32
TINY_VQGAN = {  # 32 px -> 4×4 codes of 16: sampling is 16 steps
    "embed_dim": 8,
    "n_embed": 16,
    "ddconfig": {
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "resolution": IMAGE_SIZE,
        "z_channels": 8,
    },
}


def make_tiny_models(folder: Path) -> dict[str, Path]:
    """Untrained but complete checkpoints in every format generate reads: a VQGAN bundle, a GPT prior .ckpt
    laid out as `gpt-prior fit` writes it (weights under "model.", config + tokenizer + VQGAN reference),
    and a CLIP safetensors checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vqgan_path = vqgan.save(vqgan.VQGAN(TINY_VQGAN), folder / "vqgan.safetensors")
        tokenizer = train_tokenizer([scene_at(0, i, IMAGE_SIZE).caption for i in range(64)], vocab_size=128)
        config = GPTConfig(
            text_vocab_size=tokenizer.vocab_size,
            text_len=24,
            image_vocab_size=TINY_VQGAN["n_embed"],
            image_grid=(4, 4),
            n_layer=1,
            n_head=2,
            n_embd=32,
            text_pad_id=tokenizer.pad_id,
        )
        gpt = GPT(config)
        clip = clip_rerank.load("clip-micro-32")
    torch.save(
        {
            "state_dict": {f"model.{key}": value for key, value in gpt.state_dict().items()},
            "gpt_prior": metadata(config, tokenizer, str(vqgan_path), file_sha256(vqgan_path), {}),
        },
        folder / "gpt.ckpt",
    )
    clip_path = clip_rerank.save(clip.model, "clip-micro-32", folder / "clip.safetensors")
    return {"vqgan": vqgan_path, "gpt": folder / "gpt.ckpt", "clip": clip_path}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("models"))


def generate_args(models: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["generate", PROMPT, "--gpt", str(models["gpt"]), "--clip", str(models["clip"]), "--out", str(out), *extra]


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_reranked_files_names_metadata_and_order(models, tmp_path, capsys):
    out = tmp_path / "out"
    main(generate_args(models, out, "--rerank", "6", "--keep", "3", "--seed", "7", "--batch-size", "4", "--cfg", "2"))
    folder = out / safe_name(PROMPT)
    assert sorted(p.name for p in folder.iterdir()) == ["01.png", "02.png", "03.png", "grid.png", "results.json"]

    results = json.loads((folder / "results.json").read_text())
    assert results["prompt"] == PROMPT and results["seed"] == 7 and results["grid"] == "grid.png"
    assert results["settings"]["candidates"] == 6 and results["settings"]["keep"] == 3
    assert results["settings"]["cfg_scale"] == 2.0 and results["settings"]["batch_size"] == 4
    for name in ("gpt", "vqgan"):
        assert results["checkpoints"][name]["sha256"] == file_sha256(models[name])
    assert results["checkpoints"]["clip"]["sha256"] == file_sha256(models["clip"])
    ranked = results["candidates"]
    assert [c["rank"] for c in ranked] == [1, 2, 3, 4, 5, 6]
    assert sorted(c["candidate"] for c in ranked) == list(range(6))
    scores = [c["score"] for c in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert [c["file"] for c in ranked] == ["01.png", "02.png", "03.png", None, None, None]

    # The files are the pipeline's images: the same draw in process gives the same pixels and CLIP scores.
    loaded = load_models(ModelChoice(gpt=str(models["gpt"]), clip=str(models["clip"])), prior=True, clip=True)
    candidates = generate.generate_candidates(
        loaded, PROMPT, 6, SamplingSettings(batch_size=4, cfg_scale=2.0), seed=7, progress=False
    )
    assert candidates.scores.tolist() == pytest.approx(
        [c["score"] for c in sorted(ranked, key=lambda c: c["candidate"])]
    )
    for entry in ranked[:3]:
        path = folder / entry["file"]
        assert np.array_equal(png_pixels(path), tensor_to_array(candidates.images[entry["candidate"]]))
        text = read_png_text(path)
        assert text["prompt"] == PROMPT and json.loads(text["seed"]) == 7
        assert json.loads(text["settings"]) == results["settings"]
        assert json.loads(text["rank"]) == entry["rank"] and json.loads(text["score"]) == pytest.approx(entry["score"])

    # grid.png: all 6 candidates, best first, in one row with a 2 px gutter
    grid = png_pixels(folder / "grid.png")
    assert grid.shape == (IMAGE_SIZE + 4, 6 * (IMAGE_SIZE + 2) + 2, 3)
    for column, entry in enumerate(ranked):
        x = 2 + column * (IMAGE_SIZE + 2)
        assert np.array_equal(
            grid[2 : 2 + IMAGE_SIZE, x : x + IMAGE_SIZE], tensor_to_array(candidates.images[entry["candidate"]])
        )
    assert json.loads(read_png_text(folder / "grid.png")["scores"]) == pytest.approx(scores)

    printed = capsys.readouterr().out
    assert str(folder) in printed and "rank  candidate  clip score" in printed and "kept 3 of 6" in printed


def test_same_seed_same_bytes_new_folder_each_run(models, tmp_path):
    out = tmp_path / "out"
    args = generate_args(models, out, "--rerank", "4", "--keep", "2", "--seed", "3")
    main(args)
    main(args)
    main(generate_args(models, out, "--rerank", "4", "--keep", "2", "--seed", "4"))
    first, again, other = out / safe_name(PROMPT), out / f"{safe_name(PROMPT)}-2", out / f"{safe_name(PROMPT)}-3"
    for name in ("01.png", "02.png", "grid.png", "results.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "grid.png").read_bytes() != (other / "grid.png").read_bytes()  # another seed, other images


def test_sampling_defaults_come_from_the_checkpoint_and_flags_override_them(models, tmp_path):
    checkpoint = torch.load(models["gpt"], weights_only=True)
    checkpoint["gpt_prior"]["sampling"] = json.dumps({"cfg_scale": 1.5, "top_p": 0.8, "temperature": 0.9})
    torch.save(checkpoint, tmp_path / "gpt.ckpt")
    out = tmp_path / "out"
    main(["generate", PROMPT, "--gpt", str(tmp_path / "gpt.ckpt"), "--out", str(out), "--keep", "1", "--top-p", "0.5"])
    settings = json.loads((out / safe_name(PROMPT) / "results.json").read_text())["settings"]
    assert (settings["cfg_scale"], settings["temperature"], settings["top_p"]) == (1.5, 0.9, 0.5)


def test_without_rerank_clip_is_never_loaded(models, tmp_path, monkeypatch):
    def no_clip(*args, **kwargs):
        raise AssertionError("CLIP must not be loaded without --rerank or --clip")

    monkeypatch.setattr(vqgan_clip.models.clip_rerank, "load", no_clip)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large green triangle\n\n  a small yellow square  \n")
    out = tmp_path / "out"
    main(
        [
            "generate",
            "--prompts-file",
            str(prompts),
            "--gpt",
            str(models["gpt"]),
            "--keep",
            "2",
            "--out",
            str(out),
            "--cfg",
            "1",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == ["a-large-green-triangle", "a-small-yellow-square"]
    results = json.loads((out / "a-small-yellow-square" / "results.json").read_text())
    assert results["prompt"] == "a small yellow square" and results["checkpoints"]["clip"] is None
    assert [c["score"] for c in results["candidates"]] == [None, None]
    assert [c["candidate"] for c in results["candidates"]] == [0, 1]  # draw order
    assert sorted(p.name for p in (out / "a-small-yellow-square").iterdir()) == [
        "01.png",
        "02.png",
        "grid.png",
        "results.json",
    ]


def test_the_demo_models_are_used_when_asked(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = write_demo_models("runs/demo", vqgan=models["vqgan"], gpt=models["gpt"], clip=models["clip"])
    assert not Path(json.loads(written.read_text())["gpt"]).is_absolute()
    assert {key: path.resolve() for key, path in demo_models().items()} == {k: p.resolve() for k, p in models.items()}
    main(["generate", PROMPT, "--rerank", "2", "--keep", "1", "--demo-models"])
    results = json.loads((tmp_path / "runs" / "generate" / safe_name(PROMPT) / "results.json").read_text())
    assert results["checkpoints"]["gpt"]["path"] == str(models["gpt"].resolve())
    assert results["checkpoints"]["clip"]["sha256"] == file_sha256(models["clip"])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("empty prompt", "prompt is empty"),
        ("blank prompts file", "has no prompts"),
        ("no prompt", "no prompt given"),
        ("fewer candidates than kept", "--rerank 2 draws fewer candidates than --keep 3"),
        ("missing gpt", "not found"),
        ("not a checkpoint", "garbage.ckpt is not a readable PyTorch checkpoint"),
        ("missing clip", "CLIP checkpoint missing.safetensors not found"),
        ("unknown clip", "unknown CLIP architecture"),
        ("demo models asked, no demo run", "run `vqgan-clip demo --train`"),
        ("bad sampling", "--top-p: must be <= 1, got 1.5"),
        ("infinite temperature", "--temperature: inf is not a finite number"),
        ("nan guidance", "--cfg: nan is not a finite number"),
        ("no candidates", "--rerank: must be >= 1, got 0"),
        ("vqgan of another codebook", "pass the prior's own VQGAN with --vqgan"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path, monkeypatch, case, expected):
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    gpt, clip = str(models["gpt"]), str(models["clip"])
    if case == "vqgan of another codebook":
        vqgan.save(vqgan.VQGAN(TINY_VQGAN | {"n_embed": 32}), tmp_path / "other.safetensors")
    args = {
        "empty prompt": ["  ", "--gpt", gpt],
        "blank prompts file": ["--prompts-file", "blank.txt", "--gpt", gpt],
        "no prompt": ["--gpt", gpt],
        "fewer candidates than kept": [PROMPT, "--gpt", gpt, "--clip", clip, "--rerank", "2", "--keep", "3"],
        "missing gpt": [PROMPT, "--gpt", "missing.ckpt"],
        "not a checkpoint": [PROMPT, "--gpt", "garbage.ckpt"],
        "missing clip": [PROMPT, "--gpt", gpt, "--rerank", "4", "--clip", "missing.safetensors"],
        "unknown clip": [PROMPT, "--gpt", gpt, "--rerank", "4", "--clip", "no-such-clip"],
        "demo models asked, no demo run": [PROMPT, "--demo-models"],
        "bad sampling": [PROMPT, "--gpt", gpt, "--top-p", "1.5"],
        "infinite temperature": [PROMPT, "--gpt", gpt, "--temperature", "inf"],
        "nan guidance": [PROMPT, "--gpt", gpt, "--cfg", "nan"],
        "no candidates": [PROMPT, "--gpt", gpt, "--rerank", "0"],
        "vqgan of another codebook": [PROMPT, "--gpt", gpt, "--vqgan", "other.safetensors"],
    }[case]
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # the other VQGAN's sha256 differs from the prior's: warned, then refused
        main(["generate", *args, "--out", "out"])
    message = str(exit_info.value.code)
    assert message.startswith("vqgan-clip generate: error:") and expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def generate_until_its_folder_is_being_written(out: Path) -> subprocess.Popen:
    """`vqgan-clip generate` with the shipped models, stopped at nothing yet: returns once the hidden
    folder it writes the images into exists (many candidates, so the writing takes a while)."""
    command = [sys.executable, "-m", "vqgan_clip", "generate", "a large red circle", "--rerank", "256", "--keep", "256"]
    process = subprocess.Popen([*command, "--seed", "0", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".a-large-red-circle.partial-*/*.png")):
        assert process.poll() is None and time.monotonic() < deadline, "generate ended before writing"
        time.sleep(0.002)
    return process


@pytest.mark.slow
def test_sigterm_and_sigkill_leave_no_half_written_folder(tmp_path):
    out = tmp_path / "out"
    process = generate_until_its_folder_is_being_written(out)
    process.send_signal(signal.SIGTERM)  # what timeout and schedulers send: handled like Ctrl-C
    assert process.wait(60) != 0 and "interrupted" in process.stderr.read()
    assert os.listdir(out) == []

    process = generate_until_its_folder_is_being_written(out)
    process.kill()
    process.wait(60)
    (partial,) = out.iterdir()  # kill -9 cannot clean up, but leaves only the hidden partial folder
    assert partial.name.startswith(".a-large-red-circle.partial-")
    main(["generate", "a large red circle", "--rerank", "2", "--keep", "2", "--seed", "0", "--out", str(out)])
    (folder,) = out.iterdir()  # the next run removed the killed run's leftovers
    assert folder.name == "a-large-red-circle" and (folder / "results.json").is_file()
