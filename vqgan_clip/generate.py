"""`vqgan-clip generate`: a prompt → N code grids from the GPT prior → VQGAN images → CLIP scores → the best K.

    models = load_models(ModelChoice(gpt="runs/demo/gpt/last.ckpt", clip="runs/demo/clip/clip.safetensors"),
                         prior=True, clip=True)
    candidates = generate_candidates(models, "a small red circle above a large blue square", 32,
                                     SamplingSettings(), seed=0)
    folder = write_prompt_folder("runs/generate", candidates, keep=4, record={"seed": 0, ...})

Every prompt starts a new generator seeded with the same `seed`, so a prompt gives the same images
alone or inside a prompts file. Codes are drawn `batch_size` candidates at a time, and the batch size
is part of the draw: the same seed, settings and batch size give the same images, byte for byte.
Without a CLIP model nothing is scored and the candidates keep their draw order.

The scores are CLIP scores as `clip_rerank.metrics.clip_score` defines them (100 × cosine similarity
of image and prompt embeddings), so generate and eval report the same number.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clip_rerank.metrics import clip_score
from gpt_prior.sample import SamplingSettings
from imagetext.files import atomic_path, partial_dir, publish_dir, safe_name
from imagetext.images import save_grid, save_png
from vqgan_clip.models import ModelChoice, Models, load_models

GRID_COLUMNS = 8
SCORE_METRIC = "CLIP score: 100 × cosine similarity of the image and prompt embeddings"


def sampling_from_args(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> SamplingSettings:
    """The sampling flags (vqgan_clip.cli.add_sampling_options) over a prior's saved defaults (`saved`)."""
    flags = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "cfg_scale": args.cfg,
        "batch_size": args.batch_size,
    }
    return SamplingSettings.resolve(saved, flags)


@dataclass
class Candidates:
    """N images drawn for one prompt, in draw order, with their CLIP scores (None when not scored)."""

    prompt: str
    images: Tensor  # [N, 3, H, W] in [-1, 1], on the CPU
    scores: Tensor | None  # [N] CLIP scores

    @property
    def order(self) -> Tensor:
        """Candidate indices best first (equal scores keep draw order); draw order when unscored."""
        if self.scores is None:
            return torch.arange(len(self.images))
        return torch.sort(self.scores, descending=True, stable=True).indices


def decode(models: Models, codes: Tensor) -> Tensor:
    """Code grids [B, h, w] → float32 images [B, 3, H, W] in [-1, 1] on the CPU."""
    with torch.autocast(models.device.type, dtype=torch.bfloat16, enabled=models.bf16):
        return models.vqgan.decode_codes(codes.to(models.device)).float().cpu()


def sample_images(
    models: Models,
    captions: list[str],
    n: int,
    sampling: SamplingSettings,
    generator: torch.Generator,
    progress: bool = True,
) -> Tensor:
    """`n` decoded candidates per caption: [len(captions)·n, 3, H, W], caption-major (rows p·n … p·n+n−1 are caption p).

    Candidates are drawn and decoded `sampling.batch_size` at a time with one `generator`.
    """
    codes = models.prior.sample(captions, n, sampling, generator, bf16=models.bf16, progress=progress)
    return torch.cat([decode(models, batch) for batch in codes.split(sampling.batch_size or len(codes))])


def generate_candidates(
    models: Models, prompt: str, n: int, sampling: SamplingSettings, seed: int, progress: bool = True
) -> Candidates:
    """Draw `n` images for `prompt` with a generator seeded by `seed`, and score them when CLIP is loaded."""
    generator = torch.Generator(models.device).manual_seed(seed)
    images = sample_images(models, [prompt], n, sampling, generator, progress)
    scores = None if models.scorer is None else clip_score(models.scorer, prompt, images).per_image.cpu()
    return Candidates(prompt, images, scores)


def rank_file_name(rank: int, keep: int) -> str:
    """`01.png`, `02.png`, …: zero-padded so the files list in rank order."""
    return f"{rank:0{max(2, len(str(keep)))}d}.png"


def write_prompt_folder(out: str | Path, candidates: Candidates, keep: int, record: dict[str, Any]) -> Path:
    """Write one prompt's results into a new folder `out`/<prompt as a safe name>[-2, -3, …]:

    - the best `keep` images as 01.png, 02.png, … (rank order), each carrying `record`, its rank,
      draw index and score in PNG text chunks;
    - grid.png: all candidates, best first;
    - results.json: `record` and every candidate's draw index, rank, score and file.

    `record` holds what the files should carry (prompt, seed, settings, checkpoints). The folder is
    written under a hidden name and renamed when complete: it exists complete or not at all, whatever
    stops the run.
    """
    order = candidates.order.tolist()
    scores = None if candidates.scores is None else candidates.scores.tolist()
    name = safe_name(candidates.prompt)
    with partial_dir(out, name) as folder:
        ranked = []
        for rank, index in enumerate(order, start=1):
            score = None if scores is None else scores[index]
            file = rank_file_name(rank, keep) if rank <= keep else None
            if file is not None:
                save_png(
                    candidates.images[index],
                    folder / file,
                    metadata={**record, "rank": rank, "candidate": index, "score": score},
                )
            ranked.append({"rank": rank, "candidate": index, "score": score, "file": file})
        save_grid(
            candidates.images[order],
            folder / "grid.png",
            nrow=min(len(order), GRID_COLUMNS),
            metadata={**record, "scores": [entry["score"] for entry in ranked]},
        )
        results = {**record, "candidates": ranked, "grid": "grid.png"}
        with atomic_path(folder / "results.json") as temporary:
            temporary.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return publish_dir(folder, out, name)


def score_table(candidates: Candidates, keep: int) -> str:
    """A few lines for the terminal: the kept candidates' ranks, draw indices and scores."""
    if candidates.scores is None:
        return f"  kept {keep} candidates in draw order (no CLIP: not scored)"
    order = candidates.order.tolist()
    lines = ["  rank  candidate  clip score"]
    lines += [
        f"  {rank:>4}  {index:>9}  {candidates.scores[index]:>10.2f}"
        for rank, index in enumerate(order[:keep], start=1)
    ]
    scores = candidates.scores
    lines.append(
        f"  kept {keep} of {len(scores)}; all scores {scores.min():.2f} … {scores.max():.2f}, median {scores.median():.2f}"
    )
    return "\n".join(lines)


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    """The prompt argument, then the non-empty lines of the prompts file; an empty prompt is an error."""
    prompts = []
    if prompt is not None:
        if not prompt.strip():
            raise ValueError('the prompt is empty; give some text, e.g. vqgan-clip generate "a small red circle"')
        prompts.append(prompt.strip())
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts-file {path} not found; give a text file with one prompt per line")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"--prompts-file {path} has no prompts; write one prompt per line")
        prompts += lines
    if not prompts:
        raise ValueError("no prompt given; pass a prompt, or --prompts-file FILE with one prompt per line")
    return prompts


def candidate_counts(rerank: int | None, keep: int) -> tuple[int, int]:
    """(N drawn, K kept): N = --rerank, or K when not reranking."""
    if keep < 1:
        raise ValueError(f"--keep must be >= 1, got {keep}")
    n = keep if rerank is None else rerank
    if n < keep:
        raise ValueError(
            f"--rerank {n} draws fewer candidates than --keep {keep} keeps; use --rerank >= {keep} or a smaller --keep"
        )
    return n, keep


def run(args: argparse.Namespace) -> None:
    prompts = read_prompts(args.prompt, args.prompts_file)
    n, keep = candidate_counts(args.rerank, args.keep)
    sampling_from_args(args)  # bad flags fail before the models load
    models = load_models(ModelChoice.from_args(args), prior=True, clip=args.rerank is not None)
    sampling = sampling_from_args(args, models.prior.sampling)
    settings = {**asdict(sampling), "candidates": n, "keep": keep, "bf16": args.bf16, "device": str(models.device)}
    for prompt in prompts:
        candidates = generate_candidates(models, prompt, n, sampling, args.seed)
        record = {
            "prompt": prompt,
            "seed": args.seed,
            "settings": settings,
            "checkpoints": models.checkpoints,
            "score_metric": SCORE_METRIC if models.scorer else None,
        }
        folder = write_prompt_folder(args.out, candidates, keep, record)
        print(f"{prompt!r} -> {folder}")
        print(score_table(candidates, keep))
