"""`vqgan-clip eval`: how well generated images show their captions, measured on captions held out from training.

Caption sets: with `--data shapes`, "held_out" (shapes seed 1: scenes the training set, seed 0, never
drew, in the training split's compositions) and "novel" (colour+shape pairs the training split never
shows); with `--data DIR`, "held_out": the folder's validation split (seed 0, 5%, as the DataModule
makes it). For every caption, N candidates are drawn; candidate 0 is the single sample, the
CLIP-best of the N is the reranked top-1.

Figures per set (eval.json: "sets" → set name → group → figure):
    attribute_accuracy  only when every caption is a shapes caption: the fraction of captions whose
                        image the parser (imagetext.describe.matches) finds to show every attribute.
                        "real": the data's own images (the ruler's ceiling), "vqgan_reconstruction":
                        those images encoded and decoded by the VQGAN (the ceiling of anything the
                        GPT's codes can show), "single_sample", "reranked_top1", "rerank_lift" =
                        reranked_top1 − single_sample, "oracle_any_of_n": the fraction of captions
                        with at least one right candidate (what a perfect reranker would reach), and
                        "clip_pick_rate": among those captions, how often CLIP's top-1 is a right one.
    one_object, two_objects   the same single_sample / reranked_top1 / oracle_any_of_n per caption kind,
                        with "n_captions" of that kind.
    candidate_errors    over all N candidates of every caption: how many are right ("correct") and how
                        many get each thing wrong (imagetext.describe.ERROR_KINDS: the object count,
                        else size, colour, shape, relation; a candidate can count under several).
    diversity           mean over captions of the distinct images among the N (for GPT candidates, the
                        distinct code grids: the VQGAN decodes a grid to one image) and of the distinct
                        scenes the parser reads in them.
    clip_score          mean CLIP score (100 × cosine) of "real", "single_sample", "reranked_top1" images
                        with their captions.
    fd_clip             FD-CLIP of the "single_sample" and of the "reranked_top1" images against the real ones.
    vqgan               "psnr_db" and "codebook_usage" of the VQGAN encoding and decoding the real images.

The candidates come from a `CandidateSource`, a function (captions, n) → images [len(captions)·n,
3, H, W] caption-major: the GPT prior for the command, or, in the tests, the real renders, which
must score (close to) 100% and so show that the ruler itself can be trusted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from clip_rerank import Scorer
from clip_rerank.metrics import clip_score, fd_clip
from imagetext.datamodule import ImageTextDataModule
from imagetext.describe import ERROR_KINDS, describe, matches, scene_errors, scene_key
from imagetext.files import atomic_path
from imagetext.shapes import ShapesDataset, parse_caption
from vqgan import VQGAN
from vqgan.lightning import psnr
from vqgan.quantize import codebook_usage
from vqgan_clip.generate import SCORE_METRIC, sample_images, sampling_from_args
from vqgan_clip.models import ModelChoice, load_models
from vqgan_clip.report import Row, Section, Tile, write_report

CandidateSource = Callable[[list[str], int], Tensor]  # (captions, n) -> [len(captions)·n, 3, H, W], caption-major
HELD_OUT_SEED = 1  # the shapes training data is drawn with seed 0
GPT_PRIOR_SOURCE = "gpt_prior"
REPORT_ROWS = 8  # captions shown per set
REPORT_TOP = 6  # reranked candidates shown per caption
RECONSTRUCTION_BATCH = 64


@dataclass
class CaptionSet:
    """Captions with their real images [P, 3, H, W]."""

    name: str
    description: str
    captions: list[str]
    images: Tensor


@dataclass
class SetEvaluation:
    caption_set: CaptionSet
    candidates: Tensor  # [P, N, 3, H, W]
    scores: Tensor  # [P, N] CLIP scores
    real_scores: Tensor  # [P]
    figures: dict[str, object]

    @property
    def has_attribute_accuracy(self) -> bool:
        return "attribute_accuracy" in self.figures


def shapes_caption_sets(n: int, image_size: int, seed: int = HELD_OUT_SEED) -> list[CaptionSet]:
    """ "held_out" and "novel": items 0 … n−1 of the shapes sets with `seed`, rendered at `image_size`."""
    sets = []
    for name, split, what in (
        ("held_out", "train", "training compositions, unseen scenes"),
        ("novel", "novel", "colour+shape pairs never in training"),
    ):
        data = ShapesDataset(n, image_size, seed=seed, split=split)
        items = [data[i] for i in range(n)]
        sets.append(
            CaptionSet(
                name,
                f"shapes seed {seed}, {split} split, {n} items: {what}",
                [item["caption"] for item in items],
                torch.stack([item["image"] for item in items]),
            )
        )
    return sets


def folder_caption_set(path: str | Path, n: int, image_size: int) -> CaptionSet:
    """ "held_out": the first n images of the folder's validation split, with their first caption lines."""
    data = ImageTextDataModule(source="folder", path=str(path), image_size=image_size)
    data.setup("fit")
    items = [data.val_set[i] for i in range(min(n, len(data.val_set)))]
    if len(items) < 2:
        raise ValueError(
            f"--data {path}: its validation split has {len(items)} image(s), FD-CLIP needs 2; use a larger folder"
        )
    return CaptionSet(
        "held_out",
        f"{path}: {len(items)} images of its validation split",
        [item["caption"] for item in items],
        torch.stack([item["image"] for item in items]),
    )


def check_data(data: str) -> None:
    if data != "shapes" and not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data}: give 'shapes' or an image–caption folder (x.png + x.txt)")


def caption_sets(data: str, n: int, image_size: int) -> list[CaptionSet]:
    """The sets `--data` names: "shapes", or an image–caption folder."""
    check_data(data)
    return shapes_caption_sets(n, image_size) if data == "shapes" else [folder_caption_set(data, n, image_size)]


def are_shapes_captions(captions: list[str]) -> bool:
    try:
        for caption in captions:
            parse_caption(caption)
    except ValueError:
        return False
    return True


def attribute_accuracy(captions: list[str], images: Tensor) -> float:
    """Fraction of (caption, image) pairs in which the parser finds every attribute of the caption."""
    return sum(matches(caption, image) for caption, image in zip(captions, images)) / len(captions)


def distinct_count(images: Tensor) -> int:
    """How many different images [N, 3, H, W] there are, bit for bit."""
    return len({image.numpy().tobytes() for image in images})


def judged_candidates_figures(captions: list[str], candidates: Tensor, best: Tensor) -> dict[str, object]:
    """The parser's verdict on every candidate [P, N, 3, H, W] and what it says (module docstring:
    oracle and CLIP pick rate, per caption kind, candidate errors, diversity); `best` [P]: CLIP's picks."""
    n_captions, n_candidates = candidates.shape[:2]
    right = torch.zeros(n_captions, n_candidates, dtype=torch.bool)
    errors = dict.fromkeys(ERROR_KINDS, 0)
    distinct_scenes = 0
    expected_scenes = [parse_caption(caption) for caption in captions]
    for p, expected in enumerate(expected_scenes):
        keys = set()
        for i, image in enumerate(candidates[p]):
            found = describe(image)
            wrong = scene_errors(expected, found)
            right[p, i] = not wrong
            for kind in wrong:
                errors[kind] += 1
            keys.add(scene_key(found))
        distinct_scenes += len(keys)

    def accuracy_of(rows: Tensor) -> dict[str, float]:
        picked = right[rows, best[rows]]
        return {
            "n_captions": int(rows.numel()),
            "single_sample": right[rows, 0].float().mean().item(),
            "reranked_top1": picked.float().mean().item(),
            "oracle_any_of_n": right[rows].any(dim=1).float().mean().item(),
        }

    every = torch.arange(n_captions)
    overall = accuracy_of(every)
    del overall["n_captions"]
    oracle = right.any(dim=1)
    overall["rerank_lift"] = overall["reranked_top1"] - overall["single_sample"]
    overall["clip_pick_rate"] = right[every, best][oracle].float().mean().item() if oracle.any() else 0.0
    figures: dict[str, object] = {"attribute_accuracy": overall}
    n_objects = torch.tensor([len(scene.objects) for scene in expected_scenes])
    for kind, count in (("one_object", 1), ("two_objects", 2)):
        rows = every[n_objects == count]
        if rows.numel():
            figures[kind] = accuracy_of(rows)
    figures["candidate_errors"] = {"candidates": n_captions * n_candidates, "correct": int(right.sum()), **errors}
    figures["diversity"] = {
        "distinct_images": sum(distinct_count(c) for c in candidates) / n_captions,
        "distinct_scenes": distinct_scenes / n_captions,
    }
    return figures


def reconstruction_figures(vqgan: VQGAN, images: Tensor, bf16: bool = False) -> tuple[dict[str, float], Tensor]:
    """PSNR (dB, mean over images) and codebook usage of the VQGAN encoding and decoding `images`, and the
    reconstructions themselves [B, 3, H, W] on the CPU."""
    device = next(vqgan.parameters()).device
    total_psnr, codes, decoded = 0.0, [], []
    for batch in images.split(RECONSTRUCTION_BATCH):
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            batch_codes = vqgan.encode_codes(batch)
            reconstructions = vqgan.decode_codes(batch_codes).float()
        total_psnr += psnr(batch, reconstructions).item() * len(batch)
        codes.append(batch_codes.cpu())
        decoded.append(reconstructions.cpu())
    figures = {
        "psnr_db": total_psnr / len(images),
        "codebook_usage": codebook_usage(torch.cat(codes), vqgan.codebook_size).item(),
    }
    return figures, torch.cat(decoded)


def evaluate_set(
    caption_set: CaptionSet,
    source: CandidateSource,
    scorer: Scorer,
    vqgan: VQGAN,
    n_candidates: int,
    bf16: bool = False,
) -> SetEvaluation:
    """Draw `n_candidates` per caption from `source` and measure the set's figures (module docstring)."""
    captions, real = caption_set.captions, caption_set.images
    images = source(captions, n_candidates)
    expected = (len(captions) * n_candidates, *real.shape[1:])
    if tuple(images.shape) != expected:
        raise ValueError(
            f"the candidate source gave images of shape {list(images.shape)}, expected {list(expected)} "
            f"({n_candidates} per caption at the real images' size)"
        )
    per_candidate = [caption for caption in captions for _ in range(n_candidates)]
    scores = rearrange(clip_score(scorer, per_candidate, images).per_image.cpu(), "(p n) -> p n", n=n_candidates)
    candidates = rearrange(images, "(p n) c h w -> p n c h w", n=n_candidates)
    best = scores.argmax(dim=1)  # ties: the first, so with equal scores the top-1 is the single sample
    single, top1 = candidates[:, 0], candidates[torch.arange(len(captions)), best]
    real_scores = clip_score(scorer, captions, real).per_image.cpu()

    figures: dict[str, object] = {"n_captions": len(captions), "n_candidates": n_candidates}
    vqgan_figures, reconstructions = reconstruction_figures(vqgan, real, bf16)
    if are_shapes_captions(captions):
        judged = judged_candidates_figures(captions, candidates, best)
        figures["attribute_accuracy"] = {
            "real": attribute_accuracy(captions, real),
            "vqgan_reconstruction": attribute_accuracy(captions, reconstructions),
            **judged.pop("attribute_accuracy"),
        }
        figures.update(judged)
    figures["clip_score"] = {
        "real": real_scores.mean().item(),
        "single_sample": scores[:, 0].mean().item(),
        "reranked_top1": scores.max(dim=1).values.mean().item(),
    }
    figures["fd_clip"] = {"single_sample": fd_clip(scorer, single, real), "reranked_top1": fd_clip(scorer, top1, real)}
    figures["vqgan"] = vqgan_figures
    return SetEvaluation(caption_set, candidates, scores, real_scores, figures)


def evaluate(
    sets: list[CaptionSet], source: CandidateSource, scorer: Scorer, vqgan: VQGAN, n_candidates: int, bf16: bool = False
) -> list[SetEvaluation]:
    return [evaluate_set(caption_set, source, scorer, vqgan, n_candidates, bf16) for caption_set in sets]


def eval_results(
    evaluations: list[SetEvaluation], sample_source: str, settings: dict[str, object]
) -> dict[str, object]:
    """What eval.json holds: the source of the candidates, the settings, and every set's description and figures."""
    return {
        "sample_source": sample_source,
        **settings,
        "score_metric": SCORE_METRIC,
        "sets": {e.caption_set.name: {"description": e.caption_set.description, **e.figures} for e in evaluations},
    }


def figures_table(evaluations: list[SetEvaluation]) -> dict[str, dict[str, str]]:
    """{figure label: {set name: formatted value}} for the report."""
    table: dict[str, dict[str, str]] = {}
    for evaluation in evaluations:
        for group, values in evaluation.figures.items():
            if not isinstance(values, dict):
                table.setdefault(group.replace("_", " "), {})[evaluation.caption_set.name] = str(values)
                continue
            for key, value in values.items():
                label = f"{group.replace('_', ' ')}: {key.replace('_', ' ')}"
                table.setdefault(label, {})[evaluation.caption_set.name] = _format_figure(group, key, value)
    return table


def _format_figure(group: str, key: str, value: float) -> str:
    if key == "n_captions" or group == "candidate_errors":
        return str(value)
    if group in ("attribute_accuracy", "one_object", "two_objects"):
        return f"{100 * value:+.1f} points" if key == "rerank_lift" else f"{100 * value:.1f}%"
    if key == "codebook_usage":
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if group == "fd_clip" else f"{value:.2f}"


def report_section(evaluation: SetEvaluation) -> Section:
    """The first captions of a set: the real image, the single sample, then the reranked best, with scores."""
    caption_set, judged = evaluation.caption_set, evaluation.has_attribute_accuracy
    rows = []
    for p, caption in enumerate(caption_set.captions[:REPORT_ROWS]):

        def tile(image: Tensor, label: str, score: float, caption: str = caption) -> Tile:
            return Tile(image, f"{label} {score:.1f}", matches(caption, image) if judged else None)

        scores = evaluation.scores[p]
        ranked = torch.sort(scores, descending=True, stable=True).indices[:REPORT_TOP].tolist()
        tiles = [
            tile(caption_set.images[p], "real", evaluation.real_scores[p].item()),
            tile(evaluation.candidates[p, 0], "sample", scores[0].item()),
        ]
        tiles += [
            tile(evaluation.candidates[p, i], f"#{rank} (c{i})", scores[i].item())
            for rank, i in enumerate(ranked, start=1)
        ]
        rows.append(Row(caption, tiles))
    return Section(f"{caption_set.name}: {caption_set.description}", rows)


def write_eval(out: str | Path, results: dict[str, object], evaluations: list[SetEvaluation]) -> tuple[Path, Path]:
    """Write `out`/eval.json and `out`/report.html (figures, captioned grids with CLIP scores, settings)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "eval.json") as temporary:
        temporary.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    settings = {key: value for key, value in results.items() if key != "sets"}
    report = write_report(
        out / "report.html",
        f"vqgan-clip eval ({results['sample_source']})",
        settings,
        figures_table(evaluations),
        [report_section(e) for e in evaluations],
    )
    return out / "eval.json", report


def summary(evaluations: list[SetEvaluation]) -> str:
    """One line per set for the terminal."""
    lines = []
    for evaluation in evaluations:
        figures = evaluation.figures
        parts = [f"{evaluation.caption_set.name}:"]
        if evaluation.has_attribute_accuracy:
            accuracy = figures["attribute_accuracy"]
            parts.append(
                f"accuracy {100 * accuracy['single_sample']:.1f}% -> {100 * accuracy['reranked_top1']:.1f}% "
                f"reranked ({100 * accuracy['rerank_lift']:+.1f} points; any of {figures['n_candidates']} "
                f"{100 * accuracy['oracle_any_of_n']:.1f}%, CLIP picks a right one "
                f"{100 * accuracy['clip_pick_rate']:.1f}% of those; VQGAN reconstructions "
                f"{100 * accuracy['vqgan_reconstruction']:.1f}%),"
            )
        parts.append(
            f"CLIP score {figures['clip_score']['reranked_top1']:.2f} (real {figures['clip_score']['real']:.2f}),"
            f" FD-CLIP {figures['fd_clip']['reranked_top1']:.4f}, VQGAN PSNR {figures['vqgan']['psnr_db']:.2f} dB"
        )
        lines.append(" ".join(parts))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    check_data(args.data)  # before the models load
    sampling_from_args(args)  # bad flags fail before the models load
    models = load_models(ModelChoice.from_args(args), prior=True, clip=True)
    sampling = sampling_from_args(args, models.prior.sampling)
    grid_h, grid_w = models.prior.config.image_grid
    if grid_h != grid_w:
        raise ValueError(
            f"the GPT prior draws {grid_h}×{grid_w} code grids; eval compares with square real images only"
        )
    image_size = grid_h * models.vqgan.downsample_factor
    sets = caption_sets(args.data, args.n, image_size)

    generator = torch.Generator(models.device).manual_seed(args.seed)

    def prior_source(captions: list[str], n: int) -> Tensor:
        return sample_images(models, captions, n, sampling, generator)

    evaluations = evaluate(sets, prior_source, models.scorer, models.vqgan, args.rerank, args.bf16)
    settings = {
        "data": args.data,
        "n": args.n,
        "rerank": args.rerank,
        "seed": args.seed,
        "image_size": image_size,
        "sampling": asdict(sampling),
        "bf16": args.bf16,
        "checkpoints": models.checkpoints,
    }
    eval_json, report = write_eval(args.out, eval_results(evaluations, GPT_PRIOR_SOURCE, settings), evaluations)
    print(summary(evaluations))
    print(f"wrote {eval_json} and {report}")
