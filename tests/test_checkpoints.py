"""Hostile or broken model files: every loader answers with one line naming the file, and runs nothing."""

import dataclasses
import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import clip_rerank
import gpt_prior
import vqgan
from imagetext.checkpoints import CheckpointError, check_device, read_torch
from imagetext.code_shards import read_code_shard
from imagetext.files import file_sha256


class RunsCode:
    """A pickle that would create a file when unpickled: proof that nothing was unpickled if it stays absent."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def broken_files(folder):
    """name -> path of each kind of broken model file, and the words its error must hold."""
    (folder / "zero.ckpt").write_bytes(b"")
    (folder / "text.ckpt").write_text("these are not weights\n")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, folder / "whole.ckpt")
    (folder / "truncated.ckpt").write_bytes((folder / "whole.ckpt").read_bytes()[:300])
    torch.save({"state_dict": {}, "payload": RunsCode(folder / "ran")}, folder / "payload.ckpt")
    (folder / "zero.safetensors").write_bytes(b"")
    (folder / "huge-header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    save_file({"w": torch.zeros(1000)}, str(folder / "whole.safetensors"))
    (folder / "truncated.safetensors").write_bytes((folder / "whole.safetensors").read_bytes()[:200])
    return {
        "zero.ckpt": "is empty (0 bytes)",
        "text.ckpt": "is not a readable PyTorch checkpoint",
        "truncated.ckpt": "is not a readable PyTorch checkpoint",
        "payload.ckpt": "so it was refused: unpickling it could run code",
        "zero.safetensors": "is empty (0 bytes)",
        "huge-header.safetensors": "is not a readable safetensors file",
        "truncated.safetensors": "is not a readable safetensors file",
    }


LOADERS = {
    "vqgan": vqgan.load,
    "gpt_prior": gpt_prior.load,
    "clip": clip_rerank.load,
    "code shard": read_code_shard,
}


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_refuses_broken_files_in_one_line(loader, tmp_path):
    for name, words in broken_files(tmp_path).items():
        if loader == "code shard" and name.endswith(".ckpt"):
            continue  # code shards are safetensors only
        with pytest.raises(CheckpointError) as error:
            LOADERS[loader](tmp_path / name)
        message = str(error.value)
        assert str(tmp_path / name) in message and words in message and "\n" not in message, (name, message)
        assert "weights_only=False" not in message  # never the advice to unpickle a refused file
    assert not (tmp_path / "ran").exists()


def test_a_clip_checkpoint_whose_config_lacks_text_cfg_is_one_line(tmp_path):
    metadata = {
        "format": "clip_rerank/1",
        "architecture": "x",
        "model_config": json.dumps({"embed_dim": 8, "vision_cfg": {}}),
        "preprocess": "{}",
    }
    save_file({"w": torch.zeros(1)}, str(tmp_path / "c.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="its model_config lacks text_cfg"):
        clip_rerank.load(tmp_path / "c.safetensors")


def test_a_cuda_device_without_cuda_names_the_real_cause(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.ckpt")
    with pytest.raises(CheckpointError, match=r"this torch sees no CUDA GPU"):
        read_torch(tmp_path / "w.ckpt", map_location="cuda")
    check_device("cpu")


def test_fit_resume_from_a_pickle_payload_is_refused_in_one_line(tmp_path):
    with open(tmp_path / "last.ckpt", "wb") as file:
        pickle.dump({"payload": RunsCode(tmp_path / "ran")}, file)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqgan",
            "fit",
            "-c",
            "shapes",
            "--ckpt_path",
            str(tmp_path / "last.ckpt"),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "false",
            "--data.num_workers",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0 and not (tmp_path / "ran").exists()
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("vqgan: error:") and "so it was refused" in last_line, result.stderr[-1500:]


TINY_VQGAN = {
    "embed_dim": 8,
    "n_embed": 16,
    "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "resolution": 8},
}


def tiny_prior(vqgan_file) -> gpt_prior.checkpoint.PriorBundle:
    tokenizer = gpt_prior.train_tokenizer(["a red circle", "a blue square"], vocab_size=64)
    config = gpt_prior.GPTConfig(
        text_len=8, n_layer=1, n_head=2, n_embd=16, text_vocab_size=tokenizer.vocab_size,
        image_vocab_size=16, image_grid=(2, 2), text_pad_id=tokenizer.pad_id,
    )  # fmt: skip
    return gpt_prior.checkpoint.PriorBundle(
        gpt_prior.GPT(config), tokenizer, config, str(vqgan_file), file_sha256(vqgan_file), {"top_p": 0.9}
    )


def test_every_stage_writes_one_format_and_refuses_another_stage_s_file(tmp_path):
    """save → .safetensors with format STAGE/1 and the config in the metadata; each loader names the
    format it found in another stage's file."""
    files = {"vqgan": vqgan.save(vqgan.VQGAN(TINY_VQGAN), tmp_path / "v.safetensors")}
    files["gpt_prior"] = gpt_prior.save(tiny_prior(files["vqgan"]), tmp_path / "g.safetensors")
    files["clip_rerank"] = clip_rerank.save(
        clip_rerank.load("clip-micro-32").model, "clip-micro-32", tmp_path / "c.safetensors"
    )
    for stage, path in files.items():
        with safe_open(str(path), "pt") as file:
            assert file.metadata()["format"] == f"{stage}/1"
    assert vqgan.load(files["vqgan"]).config == vqgan.VQGANConfig.from_dict(TINY_VQGAN)
    prior = gpt_prior.load(files["gpt_prior"])
    assert prior.sampling == {"top_p": 0.9} and prior.vqgan_path == str(files["vqgan"])
    loaders = {"vqgan": vqgan.load, "gpt_prior": gpt_prior.load, "clip_rerank": clip_rerank.load}
    for stage, loader in loaders.items():
        other = "gpt_prior" if stage == "vqgan" else "vqgan"
        with pytest.raises(CheckpointError, match=rf"is not a {stage} model file \(its format is '{other}/1'\)"):
            loader(files[other])


def test_files_written_before_the_format_still_load(tmp_path):
    """A VQGAN bundle with `vqgan_config` metadata, a `vqgan fit` .ckpt with only its hyperparameters,
    and a `gpt-prior fit` .ckpt whose entry held plain dicts and no format."""
    model = vqgan.VQGAN(TINY_VQGAN)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(tmp_path / "old.safetensors"), metadata={"vqgan_config": json.dumps(model.config.to_dict())})
    hparams = {"ddconfig": TINY_VQGAN["ddconfig"], "embed_dim": 8, "n_embed": 16, "quantizer": None}
    lightning_state = {f"model.{key}": value for key, value in state.items()}
    torch.save({"state_dict": lightning_state, "hyper_parameters": hparams}, tmp_path / "old-vqgan.ckpt")
    for path in (tmp_path / "old.safetensors", tmp_path / "old-vqgan.ckpt"):
        loaded = vqgan.load(path)
        assert loaded.config == model.config
        assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state.items())

    prior = tiny_prior(tmp_path / "old.safetensors")
    entry = {
        "config": dataclasses.asdict(prior.config) | {"image_grid": [2, 2]},
        "tokenizer": prior.tokenizer.to_json(),
        "vqgan": prior.vqgan_path,
        "vqgan_sha256": prior.vqgan_sha256,
    }
    prior_state = {f"model.{key}": value for key, value in prior.model.state_dict().items()}
    torch.save({"state_dict": prior_state, "gpt_prior": entry}, tmp_path / "old-gpt.ckpt")
    loaded_prior = gpt_prior.load(tmp_path / "old-gpt.ckpt")
    assert loaded_prior.config == prior.config and loaded_prior.sampling == {}
    assert torch.equal(loaded_prior.model.image_head.weight, prior.model.image_head.weight)


def test_a_taming_checkpoint_given_as_a_vqgan_says_how_to_load_it(tmp_path):
    """Public taming checkpoints pickle Lightning callback objects: refused, with the way that reads them."""
    torch.save({"state_dict": {}, "callbacks": RunsCode(tmp_path / "ran")}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"so it was refused.*use vqgan.from_taming\(model.yaml, ckpt\)") as error:
        vqgan.load(tmp_path / "last.ckpt")
    assert "\n" not in str(error.value) and not (tmp_path / "ran").exists()
