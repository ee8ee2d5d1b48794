"""Code shards: a dataset encoded once by a VQGAN, so the GPT prior never runs the encoder while it trains.

A code-shard folder holds one sub-folder per split, each with numbered shards, and a manifest:

    OUT/manifest.json                    which VQGAN (path + sha256), codebook size, grid, image size,
                                         and per split the shards with their item counts
    OUT/train/codes-000000.safetensors   "codes": int16 [n, h, w]; metadata "captions": JSON list of
    OUT/val/codes-000000.safetensors     caption lists (every caption line of each image)

Each shard is written atomically and the manifest last, so a folder with a manifest is complete and
a folder without one can be resumed shard by shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from imagetext.checkpoints import open_safetensors
from imagetext.files import atomic_path

FORMAT = "vqgan-clip-codes/1"
MANIFEST = "manifest.json"


def shard_path(folder: str | Path, split: str, index: int) -> Path:
    return Path(folder) / split / f"codes-{index:06d}.safetensors"


def write_code_shard(path: str | Path, codes: torch.Tensor, captions: list[list[str]]) -> Path:
    """Write codes [n, h, w] (stored as int16) and each item's caption lines as one shard."""
    if len(codes) != len(captions):
        raise ValueError(f"{len(codes)} code grids but {len(captions)} caption lists")
    if codes.numel() and int(codes.max()) > torch.iinfo(torch.int16).max:
        raise ValueError(f"code {int(codes.max())} does not fit int16; codebooks up to 32768 codes are supported")
    with atomic_path(path) as temporary:
        save_file(
            {"codes": codes.to(torch.int16).contiguous()},
            str(temporary),
            metadata={"format": FORMAT, "captions": json.dumps(captions)},
        )
    return Path(path)


def read_code_shard(path: str | Path) -> tuple[torch.Tensor, list[list[str]]]:
    """(codes LongTensor [n, h, w], caption lists) of one shard."""
    with open_safetensors(path) as shard:
        metadata = shard.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a code shard of format {FORMAT}; make it with `vqgan-clip encode`")
        return shard.get_tensor("codes").long(), json.loads(metadata["captions"])


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    with atomic_path(Path(folder) / MANIFEST) as temporary:
        temporary.write_text(json.dumps({"format": FORMAT, **manifest}, indent=2), encoding="utf-8")
    return Path(folder) / MANIFEST


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete code-shard folder; a clear error when the folder is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {folder} is not a finished code-shard folder; "
            f"make one with `vqgan-clip encode --vqgan CKPT --data DATA --out {folder}`"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest
