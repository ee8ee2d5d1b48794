"""Shipped models by short name: lookup, the card's sha256 check, the GPT prior bundle, `vqgan-clip export`."""

import json

import pytest
import torch
from test_generate import PROMPT, make_tiny_models

import clip_rerank
import gpt_prior
import vqgan
from imagetext import shipped
from imagetext.files import file_sha256
from vqgan_clip.cli import main


@pytest.fixture
def shipped_folder(tmp_path, monkeypatch):
    """An empty stand-in for the package's shipped-models folder."""
    folder = tmp_path / "shipped"
    for stage in shipped.STAGES:
        (folder / stage).mkdir(parents=True)
    monkeypatch.setattr(shipped, "shipped_dir", lambda stage: folder / stage)
    return folder


def write_card(bundle):
    bundle.with_suffix(".md").write_text(f"# {bundle.stem}\n\n- sha256: `{file_sha256(bundle)}`\n")


def test_export_writes_bundles_that_load_by_short_name(shipped_folder, tmp_path, capsys):
    models = make_tiny_models(tmp_path / "models")
    main(
        [
            "export",
            "--vqgan",
            str(models["vqgan"]),
            "--gpt",
            str(models["gpt"]),
            "--clip",
            str(models["clip"]),
            "--name",
            "tiny",
            "--out",
            str(shipped_folder),
        ]
    )
    printed = capsys.readouterr().out
    for stage in shipped.STAGES:
        bundle = shipped_folder / stage / "tiny.safetensors"
        assert f"sha256 {file_sha256(bundle)}" in printed
        assert shipped.shipped_names(stage) == []  # no card yet: not shipped
        write_card(bundle)
        assert shipped.shipped_names(stage) == ["tiny"]

    prior, original = gpt_prior.load("tiny"), gpt_prior.load(models["gpt"])
    assert prior.vqgan_path == "tiny" and prior.vqgan_sha256 == file_sha256(
        shipped_folder / "vqgan" / "tiny.safetensors"
    )
    assert gpt_prior.checkpoint.resolve_vqgan(prior) == shipped_folder / "vqgan" / "tiny.safetensors"
    text = prior.text_tokens([PROMPT])
    assert torch.equal(text, original.text_tokens([PROMPT]))
    codes = torch.zeros(1, prior.config.image_grid[0] * prior.config.image_grid[1], dtype=torch.long)
    assert torch.equal(prior.model(text, codes).logits_img, original.model(text, codes).logits_img)

    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(vqgan.load("tiny").encode_codes(images), vqgan.load(models["vqgan"]).encode_codes(images))
    assert torch.allclose(
        clip_rerank.load("tiny").encode_images(images), clip_rerank.load(models["clip"]).encode_images(images)
    )

    main(
        [
            "generate",
            PROMPT,
            "--rerank",
            "2",
            "--keep",
            "1",
            "--gpt",
            "tiny",
            "--clip",
            "tiny",
            "--out",
            str(tmp_path / "gen"),
        ]
    )
    results = json.loads(next((tmp_path / "gen").iterdir()).joinpath("results.json").read_text())
    assert results["checkpoints"]["clip"]["sha256"] == file_sha256(shipped_folder / "clip_rerank" / "tiny.safetensors")
    assert results["checkpoints"]["vqgan"]["sha256"] == prior.vqgan_sha256


def test_an_unknown_name_lists_the_shipped_ones(shipped_folder, tmp_path):
    models = make_tiny_models(tmp_path / "models")
    vqgan.save(vqgan.load(models["vqgan"]), shipped_folder / "vqgan" / "tiny.safetensors")
    write_card(shipped_folder / "vqgan" / "tiny.safetensors")
    with pytest.raises(shipped.ShippedModelError, match=r"no shipped vqgan model named 'shape' \(shipped: tiny\)"):
        vqgan.load("shape")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", PROMPT, "--gpt", "nope", "--out", str(tmp_path / "gen")])
    assert "no shipped gpt_prior model named 'nope' (shipped: none)" in str(exit_info.value.code)
    assert not (tmp_path / "gen").exists()


def test_a_bundle_that_differs_from_its_card_is_refused(shipped_folder, tmp_path):
    models = make_tiny_models(tmp_path / "models")
    bundle = vqgan.save(vqgan.load(models["vqgan"]), shipped_folder / "vqgan" / "tiny.safetensors")
    write_card(bundle)
    vqgan.load("tiny")
    bundle.write_bytes(bundle.read_bytes()[:-1] + b" ")  # one byte of a weight changed
    with pytest.raises(shipped.ShippedModelError, match="its card says .*the file was changed"):
        vqgan.load("tiny")
    bundle.with_suffix(".md").write_text("# tiny\n\nno digest here\n")
    with pytest.raises(shipped.ShippedModelError, match="has no 'sha256: HEX' line"):
        vqgan.load("tiny")


def test_paths_are_never_taken_for_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.is_bare_name("shapes")
    assert not any(map(shipped.is_bare_name, ["runs/x", "x.ckpt", "x.safetensors", ""]))
    (tmp_path / "shapes").write_text("a file here wins over the name")
    assert not shipped.is_bare_name("shapes")
