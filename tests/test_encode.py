"""`vqgan-clip encode` (alias `tokenize`): code shards from a VQGAN bundle, their manifest, resume, and bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vqgan
from imagetext.code_shards import read_code_shard, read_manifest
from imagetext.datamodule import ImageTextDataModule, data_module_for
from imagetext.shapes import write_shapes_folder
from vqgan_clip.cli import main

TINY_VQGAN = {
    "embed_dim": 8,
    "n_embed": 32,
    "ddconfig": {
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "resolution": 16,
        "z_channels": 8,
    },
}


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    return vqgan.save(vqgan.VQGAN(TINY_VQGAN), tmp_path / "tiny.safetensors")


def test_folder_to_code_shards_with_manifest(tmp_path, bundle):
    folder = write_shapes_folder(tmp_path / "shapes", n=20, image_size=16)
    out = tmp_path / "codes"
    main(
        [
            "encode",
            "--vqgan",
            str(bundle),
            "--data",
            str(folder),
            "--out",
            str(out),
            "--shard-size",
            "8",
            "--batch-size",
            "5",
        ]
    )
    manifest = read_manifest(out)
    assert manifest["grid"] == [8, 8] and manifest["codebook_size"] == 32 and manifest["image_size"] == 16
    assert manifest["splits"]["train"]["n"] + manifest["splits"]["val"]["n"] == 20
    assert [s["n"] for s in manifest["splits"]["train"]["shards"]] == [8, 8, 3]
    codes, captions = read_code_shard(out / manifest["splits"]["train"]["shards"][0]["file"])
    assert codes.shape == (8, 8, 8) and codes.dtype == torch.long and len(captions) == 8

    # the codes are the model's codes of the training split's images, in order, with their captions
    data = ImageTextDataModule(source="folder", path=str(folder), image_size=16)
    data.setup("fit")
    items = [data.train_set[i] for i in range(8)]
    expected = vqgan.load(bundle).encode_codes(torch.stack([item["image"] for item in items]))
    assert torch.equal(codes, expected)
    assert captions == [item["captions"] for item in items]


def test_resume_keeps_finished_shards(tmp_path, bundle):
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  source: shapes\n  n_train: 12\n  n_val: 4\n")
    out = tmp_path / "codes"
    # `tokenize`, the command's earlier name, still runs it (model cards and scripts name it).
    args = ["tokenize", "--vqgan", str(bundle), "--data", str(config), "--out", str(out), "--shard-size", "5"]
    main(args)
    first = out / "train" / "codes-000000.safetensors"
    stamp = first.stat().st_mtime_ns
    (out / "train" / "codes-000002.safetensors").unlink()  # as if interrupted before the last shard
    (out / "manifest.json").unlink()
    main(args)
    assert first.stat().st_mtime_ns == stamp
    manifest = read_manifest(out)
    assert [s["n"] for s in manifest["splits"]["train"]["shards"]] == [5, 5, 2]
    codes, captions = read_code_shard(out / "train" / "codes-000002.safetensors")
    assert len(codes) == 2 and captions[0][0].startswith("a ")


def test_missing_inputs_are_one_line_errors(tmp_path, bundle):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqgan_clip",
            "encode",
            "--vqgan",
            str(tmp_path / "none.ckpt"),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "VQGAN checkpoint" in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(FileNotFoundError, match="not a finished code-shard folder"):
        read_manifest(tmp_path / "o")


def test_a_packaged_data_block_is_found_by_its_short_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = data_module_for("shapes-64k", image_size=32, batch_size=8, num_workers=0)
    assert (len(data.train_set), len(data.val_set)) == (64_000, 500)  # the shipped GPT prior's codes
    with pytest.raises(FileNotFoundError, match="no packaged data config"):
        data_module_for("shapes-65k", image_size=32, batch_size=8, num_workers=0)


def test_an_unreadable_image_is_left_out_and_counted_not_filled_by_its_neighbour(tmp_path, bundle):
    folder = write_shapes_folder(tmp_path / "shapes", n=20, image_size=16)
    data = ImageTextDataModule(source="folder", path=str(folder), image_size=16)
    data.setup("fit")
    broken = data.train_set[3]["path"]
    Path(broken).write_bytes(b"not a png")
    out = tmp_path / "codes"
    main(["encode", "--vqgan", str(bundle), "--data", str(folder), "--out", str(out), "--shard-size", "8"])
    train = read_manifest(out)["splits"]["train"]
    assert train["left_out"] == 1 and [s["n"] for s in train["shards"]] == [7, 8, 3]
    codes, captions = read_code_shard(out / train["shards"][0]["file"])
    kept = [data.train_set[i] for i in (0, 1, 2, 4, 5, 6, 7)]
    assert captions == [item["captions"] for item in kept]  # no neighbour took the broken image's slot
    assert torch.equal(codes, vqgan.load(bundle).encode_codes(torch.stack([item["image"] for item in kept])))
