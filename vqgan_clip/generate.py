"""`vqgan-clip generate`: a prompt → N code grids from the GPT prior → VQGAN images → CLIP scores → the best K.

    models = load_models("runs/demo/gpt/last.ckpt", clip="runs/demo/clip/clip.safetensors")
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
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import clip_rerank
import gpt_prior
import vqgan
from clip_rerank.metrics import clip_score
from gpt_prior.checkpoint import PriorBundle, resolve_vqgan
from imagetext.files import atomic_path, file_sha256, partial_dir, publish_dir, safe_name
from imagetext.images import save_grid, save_png
from imagetext.progress import ProgressBar
from imagetext.shipped import resolve, resolve_if_shipped, shipped_names
from vqgan import VQGAN

DEMO_DIR = Path("runs/demo")
DEMO_MODELS_FILE = "models.json"  # {"vqgan": path, "gpt": path, "clip": path}, written by `vqgan-clip demo --train`
SHIPPED_DEFAULT = "shapes"  # the shipped models' short name (imagetext.shipped)
GRID_COLUMNS = 8
SCORE_METRIC = "CLIP score: 100 × cosine similarity of the image and prompt embeddings"


@dataclass(frozen=True)
class SamplingSettings:
    """How the GPT prior draws codes (the arguments of `gpt_prior.sample`).

    A value comes from the command line, else from the GPT checkpoint (`model.sampling` in its training
    config), else from these defaults: classifier-free guidance at 3 (the prior is trained with 10% empty
    captions for it) and a nucleus of 0.95, which drops the rare codes that decode as stray specks
    without making the candidates so alike that reranking has nothing to choose from.
    """

    temperature: float = 1.0
    top_k: int | None = None  # None: no top-k filter
    top_p: float | None = 0.95  # None or 1: no nucleus filter
    cfg_scale: float = 3.0  # 1: no guidance (and half the cost)
    batch_size: int = 32  # candidates drawn at once

    def __post_init__(self) -> None:
        for flag, value in (("--temperature", self.temperature), ("--top-p", self.top_p), ("--cfg", self.cfg_scale)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{flag} must be a finite number, got {value}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1 (or 0 for no top-k filter), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1] (1: no nucleus filter), got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"--cfg must be >= 0 (1: no guidance), got {self.cfg_scale}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, checkpoint_defaults: dict[str, Any] | None = None) -> SamplingSettings:
        """The command-line flags over the checkpoint's defaults over the class defaults (`--top-k 0`
        turns top-k off)."""
        flags = {
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "cfg_scale": args.cfg,
            "batch_size": args.batch_size,
        }
        known = {name: value for name, value in (checkpoint_defaults or {}).items() if name in flags}
        settings = known | {name: value for name, value in flags.items() if value is not None}
        if settings.get("top_k") == 0:
            settings["top_k"] = None
        return cls(**settings)


@dataclass
class Models:
    """Everything generation runs, loaded once: the prior, its VQGAN, and CLIP (None: nothing is scored)."""

    prior: PriorBundle
    vqgan: VQGAN
    scorer: clip_rerank.Scorer | None
    checkpoints: dict[str, dict[str, str | None] | None]  # "gpt", "vqgan", "clip": where each came from, sha256
    device: torch.device
    bf16: bool = False


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


def demo_models(demo_dir: str | Path = DEMO_DIR) -> dict[str, Path]:
    """The models of the latest `vqgan-clip demo --train`: {"vqgan", "gpt", "clip"} from `demo_dir`/models.json,
    whose relative paths are relative to `demo_dir` (as `write_demo_models` writes them)."""
    demo_dir = Path(demo_dir)
    file = demo_dir / DEMO_MODELS_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"--demo-models: {file} (written by `vqgan-clip demo --train`) not found; "
            f"run `vqgan-clip demo --train`, or leave out --demo-models for the shipped models"
        )
    entries = json.loads(file.read_text(encoding="utf-8"))
    missing = [key for key in ("vqgan", "gpt", "clip") if key not in entries]
    if missing:
        raise ValueError(f"{file} lacks {', '.join(missing)}; run `vqgan-clip demo --train` again to rewrite it")
    return {key: demo_dir / entries[key] for key in ("vqgan", "gpt", "clip")}


def write_demo_models(demo_dir: str | Path, *, vqgan: str | Path, gpt: str | Path, clip: str | Path) -> Path:
    """Write `demo_dir`/models.json, which `demo_models` reads (paths stored relative to `demo_dir`)."""
    demo_dir = Path(demo_dir)
    entries = {
        key: os.path.relpath(Path(path).resolve(), demo_dir.resolve())
        for key, path in (("vqgan", vqgan), ("gpt", gpt), ("clip", clip))
    }
    with atomic_path(demo_dir / DEMO_MODELS_FILE) as temporary:
        temporary.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return demo_dir / DEMO_MODELS_FILE


def default_model(key: str, use_demo: bool, demo_dir: str | Path = DEMO_DIR) -> str:
    """The model used where none is named: the shipped one ("shapes"), or with `use_demo` the one the
    latest `vqgan-clip demo --train` recorded for `key` ("vqgan", "gpt" or "clip")."""
    return str(demo_models(demo_dir)[key]) if use_demo else SHIPPED_DEFAULT


def choose_checkpoints(
    gpt: str | None,
    vqgan_path: str | None,
    clip: str | None,
    need_clip: bool,
    use_demo: bool = False,
    demo_dir: str | Path = DEMO_DIR,
) -> tuple[str, str | None, str | None]:
    """(gpt, vqgan override, clip spec): the ones given, the rest the shipped models (or the demo's).

    A prior decodes with the VQGAN it names (the shipped prior names the shipped VQGAN); the demo's
    VQGAN goes with the demo's prior.
    """
    if gpt is None:
        gpt = default_model("gpt", use_demo, demo_dir)
        if use_demo:
            vqgan_path = vqgan_path or default_model("vqgan", use_demo, demo_dir)
    if need_clip and clip is None:
        clip = default_model("clip", use_demo, demo_dir)
    return gpt, vqgan_path, clip


def load_prior(gpt: str | Path, device: str | torch.device = "cpu") -> PriorBundle:
    """The GPT prior of a `gpt-prior fit` checkpoint, a bundle or a shipped name; an unreadable file is a one-line error."""
    gpt = resolve("gpt_prior", gpt)
    if not gpt.is_file():
        raise FileNotFoundError(
            f"GPT prior checkpoint {gpt} not found; pass --gpt with a .ckpt from `gpt-prior fit`, "
            f"a .safetensors bundle or a shipped name ({', '.join(shipped_names('gpt_prior')) or 'none'})"
        )
    return gpt_prior.load(gpt, map_location=device)  # an unreadable file: imagetext.checkpoints says why


def check_codebook(prior: PriorBundle, codebook_size: int, vqgan_name: str | Path) -> None:
    """The prior's codes must index this VQGAN's codebook."""
    if codebook_size != prior.config.image_vocab_size:
        raise ValueError(
            f"VQGAN {vqgan_name} has {codebook_size} codes, but the GPT prior draws "
            f"{prior.config.image_vocab_size}; pass the prior's own VQGAN with --vqgan ({prior.vqgan_path})"
        )


def load_models(
    gpt: str | Path,
    *,
    vqgan_path: str | Path | None = None,
    clip: str | None = None,
    clip_pretrained: str | None = None,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> Models:
    """Load the GPT prior, the VQGAN it was trained on (or `vqgan_path`) and, when `clip` is given, CLIP.

    Errors (a missing or foreign checkpoint, a VQGAN with another codebook, a CLIP that cannot be
    built) are raised here, before anything is drawn or written.
    """
    device = torch.device(device)
    gpt = resolve("gpt_prior", gpt)
    prior = load_prior(gpt, device)
    vqgan_file = resolve_vqgan(prior, vqgan_path)
    decoder = vqgan.load(vqgan_file, map_location=device)
    check_codebook(prior, decoder.codebook_size, vqgan_file)
    if clip is not None:  # a shipped name as its file, so that its sha256 is recorded below
        clip = resolve_if_shipped("clip_rerank", clip)
    scorer = None if clip is None else clip_rerank.load(clip, pretrained=clip_pretrained, device=device, bf16=bf16)
    checkpoints = {
        "gpt": {"path": str(gpt.resolve()), "sha256": file_sha256(gpt)},
        "vqgan": {"path": str(vqgan_file.resolve()), "sha256": file_sha256(vqgan_file)},
        "clip": None if clip is None else clip_description(clip, clip_pretrained),
    }
    return Models(prior, decoder, scorer, checkpoints, device, bf16)


def clip_description(spec: str, pretrained: str | None) -> dict[str, str | None]:
    """Where a CLIP came from: its spec and pretrained tag or file, with the sha256 of whichever is a file."""

    def described(name: str | None) -> str | None:  # files by their full path, names and tags as given
        return str(Path(name).resolve()) if name is not None and Path(name).is_file() else name

    weights = next((Path(p) for p in (spec, pretrained) if p is not None and Path(p).is_file()), None)
    return {
        "spec": described(spec),
        "pretrained": described(pretrained),
        "sha256": None if weights is None else file_sha256(weights),
    }


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
    prior = models.prior
    rows = prior.text_tokens(captions).repeat_interleave(n, dim=0)
    empty_caption = prior.text_tokens([""]) if sampling.cfg_scale != 1.0 else None
    images = []
    with ProgressBar(total=len(rows), desc="candidates", unit="img", disable=not progress) as bar:
        for batch in rows.split(sampling.batch_size):
            codes = gpt_prior.sample(
                prior.model,
                batch,
                1,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                cfg_scale=sampling.cfg_scale,
                empty_text_tokens=empty_caption,
                generator=generator,
                bf16=models.bf16,
            )
            images.append(decode(models, codes))
            bar.update(len(batch))
    return torch.cat(images)


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
    SamplingSettings.from_args(args)  # bad flags fail before the models load
    need_clip = args.rerank is not None or args.clip is not None
    gpt, vqgan_path, clip = choose_checkpoints(args.gpt, args.vqgan, args.clip, need_clip, args.demo_models)
    models = load_models(
        gpt, vqgan_path=vqgan_path, clip=clip, clip_pretrained=args.clip_pretrained, device=args.device, bf16=args.bf16
    )
    sampling = SamplingSettings.from_args(args, models.prior.sampling)
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
