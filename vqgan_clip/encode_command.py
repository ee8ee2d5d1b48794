"""`vqgan-clip encode` (also `tokenize`): a dataset's train and val images once into code shards for the GPT prior."""

from __future__ import annotations

import argparse

import vqgan
from imagetext.datamodule import data_module_for
from imagetext.shipped import resolve
from vqgan.encode import encode_dataset


def run(args: argparse.Namespace) -> None:
    model = vqgan.load(args.vqgan, map_location=args.device)
    image_size = args.image_size or model.config.ddconfig.resolution
    data = data_module_for(args.data, image_size, args.batch_size, args.num_workers)
    manifest = encode_dataset(
        model,
        resolve("vqgan", args.vqgan),
        data,
        args.out,
        data_name=str(args.data),
        image_size=image_size,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        bf16=args.bf16,
    )
    splits, (h, w) = manifest["splits"], manifest["grid"]
    for split, entry in splits.items():
        if entry["left_out"]:
            print(f"encode {split}: left out {entry['left_out']} unreadable images (none stands in for another)")
    print(f"wrote {splits['train']['n']} train and {splits['val']['n']} val code grids {h}×{w} to {args.out}")
