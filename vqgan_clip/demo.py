"""`make demo` / `vqgan-clip demo`: the whole pipeline on the embedded shapes set, CPU only.

Stages so far: shapes data -> a sample grid of captioned images. Each stage's output is reused when
present; --fresh rebuilds.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from imagetext.images import save_grid
from imagetext.shapes import ShapesDataset, write_shapes_folder

PROFILES = {  # images in the training folder, per profile
    "full": {"n_images": 20000},
    "quick": {"n_images": 2000},
}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    profile = PROFILES["quick" if args.quick else "full"]

    data = write_shapes_folder(out / "data" / "shapes", profile["n_images"], image_size=32)
    print(f"shapes data: {data}")

    samples = ShapesDataset(64, image_size=32, seed=0)
    batch = [samples[i] for i in range(len(samples))]
    grid = save_grid(torch.stack([item["image"] for item in batch]), out / "shapes_grid.png", nrow=8)
    (out / "shapes_grid.txt").write_text("\n".join(item["caption"] for item in batch) + "\n", encoding="utf-8")
    print(f"sample grid: {grid} (captions in {grid.with_suffix('.txt')})")
