"""Hostile or broken model files: every loader answers with one line naming the file, and runs nothing."""

import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import clip_rerank
import gpt_prior
import vqgan
from imagetext.checkpoints import CheckpointError, check_device, read_torch
from imagetext.code_shards import read_code_shard


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
