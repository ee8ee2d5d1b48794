"""`vqgan-clip export`: a trained VQGAN, GPT prior and CLIP as three safetensors files, nothing pickled.

    vqgan-clip export --vqgan V.ckpt --gpt G.ckpt --clip C.ckpt --name shapes --out imagetext/shipped

writes OUT/vqgan/NAME.safetensors, OUT/gpt_prior/NAME.safetensors and OUT/clip_rerank/NAME.safetensors.
The prior's bundle names its VQGAN: by the short name NAME when OUT is the shipped-models folder (so
the installed package finds it anywhere), else by the exported VQGAN bundle's path; with that file's
sha256 either way. Each bundle's sha256 is printed, for its model card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import clip_rerank
import gpt_prior
import vqgan
from imagetext import shipped
from imagetext.files import file_sha256


def export_models(
    vqgan_checkpoint: str | Path, gpt_checkpoint: str | Path, clip_checkpoint: str | Path, out: str | Path, name: str
) -> dict[str, Path]:
    """Write the three bundles (see the module docstring); {stage: bundle path}."""
    out = Path(out)
    paths = {stage: out / stage / f"{name}.safetensors" for stage in shipped.STAGES}
    vqgan.save(vqgan.load(vqgan_checkpoint), paths["vqgan"])
    into_package = out.resolve() == shipped.shipped_dir("vqgan").parent.resolve()
    gpt_prior.save(
        gpt_prior.load(gpt_checkpoint),
        paths["gpt_prior"],
        vqgan=name if into_package else paths["vqgan"].resolve(),
        vqgan_file=paths["vqgan"],
    )
    scorer = clip_rerank.load(clip_checkpoint)
    clip_rerank.save(scorer.model, scorer.architecture, paths["clip_rerank"])
    return paths


def run(args: argparse.Namespace) -> None:
    if not args.name or "/" in args.name or Path(args.name).suffix:
        raise ValueError(f"--name {args.name!r}: give a bare word such as 'shapes' (no folder, no suffix)")
    paths = export_models(args.vqgan, args.gpt, args.clip, args.out, args.name)
    for stage, path in paths.items():
        print(f"{stage}: {path} ({path.stat().st_size / 1e6:.2f} MB) sha256 {file_sha256(path)}")
