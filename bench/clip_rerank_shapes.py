"""Rerank on shapes: does CLIP put the one matching image first among candidates that miss by one attribute?

    python bench/clip_rerank_shapes.py runs/clip/shapes/logs/version_0/checkpoints/last.ckpt
    python bench/clip_rerank_shapes.py CHECKPOINT --cases 100 --candidates 32 --seed 1 --json result.json

Each case takes the caption of a shapes scene (set --seed, so not a training scene) and renders
--candidates images: one of the captioned scene and the rest of scenes that differ from it in exactly
one attribute: the colour, shape or size of either object, or the relation between two objects.
Every candidate, the matching one included, gets its own layout: boxes taken from a pool of scenes of
a fixed seed (--layout-seed) that have the same object sizes and relation, so where the objects sit
says nothing about which candidate is right. A one-object caption has 8 one-attribute variants and a
two-object caption 19, so variants repeat (in other layouts) to fill the candidates. Variants that show
the same picture as the caption (two identical objects with the relation reversed) are left out, and
so are colour+shape pairs the training split never shows (--split train; see imagetext.shapes).

Reported: top-1 (how often rerank puts the matching image first), the same for one- and two-object
captions, and per attribute: how often the matching image outscores every candidate differing in that
attribute, and which attribute the wrong winner differed in when top-1 failed. The relation is also
split by kind: the opposite relation (the mirror picture: does CLIP bind each colour to its place?)
and a relation on the other axis (above vs to the left of: does it read the layout's direction?).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import torch

import clip_rerank
from imagetext.images import array_to_tensor
from imagetext.shapes import NOVEL_PAIRS, OPPOSITE_RELATION, Scene, render, scene_at
from imagetext.shapes_contrasts import ATTRIBUTES, one_attribute_swaps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", help="a CLIP checkpoint (.ckpt/.safetensors) or anything clip_rerank.load accepts")
    parser.add_argument("--pretrained", default=None, help="weights for an architecture name given as CLIP")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=32, help="images per case, the matching one included")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1, help="shapes seed of the captions (training used 0)")
    parser.add_argument("--layout-seed", type=int, default=2, help="shapes seed of the layout pool")
    parser.add_argument("--layouts", type=int, default=4000, help="scenes in the layout pool")
    parser.add_argument("--split", choices=("train", "novel"), default="train")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--bf16", action="store_true", help="run CLIP under bf16 autocast")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args()


# What a wrong candidate may differ in: each attribute, and the relation split by kind (`difference`).
DIFFERENCES = (*ATTRIBUTES, "relation, opposite", "relation, other axis")


def layout_key(scene: Scene) -> tuple:
    """What a layout must agree on to hold a scene: the object sizes, in order, and the relation."""
    return tuple(o.size for o in scene.objects), scene.relation


def layout_pool(seed: int, n: int, image_size: int) -> dict[tuple, list[Scene]]:
    pool = defaultdict(list)
    for index in range(n):
        scene = scene_at(seed, index, image_size)
        pool[layout_key(scene)].append(scene)
    return pool


def place(scene: Scene, pool: dict[tuple, list[Scene]], rng: np.random.Generator) -> Scene:
    """`scene` with the boxes of a random pool scene of the same sizes and relation."""
    layouts = pool.get(layout_key(scene))
    if not layouts:
        raise ValueError(f"no layout for {scene.caption!r} in the pool; raise --layouts")
    layout = layouts[rng.integers(len(layouts))]
    return replace(scene, objects=tuple(replace(o, box=placed.box) for o, placed in zip(scene.objects, layout.objects)))


def one_attribute_variants(scene: Scene, split: str) -> list[tuple[str, Scene]]:
    """Every (attribute, scene) differing from `scene` in one attribute of one object, or in the relation;
    with split "train", not the colour+shape pairs that split never shows."""
    return [
        (attribute, variant)
        for attribute, variants in one_attribute_swaps(scene, every_object=True).items()
        for variant in variants
        if split != "train" or not any((o.color, o.shape) in NOVEL_PAIRS for o in variant.objects)
    ]


def difference(truth: Scene, attribute: str, variant: Scene) -> str:
    """The attribute a variant differs in; a relation is told apart as "opposite" (the mirror picture, which
    only a model that binds colours to places rejects) or "other axis" (above vs to the left of)."""
    if attribute != "relation":
        return attribute
    return "relation, opposite" if variant.relation == OPPOSITE_RELATION[truth.relation] else "relation, other axis"


def build_case(
    caption_scene: Scene, n_candidates: int, pool: dict, image_size: int, split: str, rng: np.random.Generator
) -> tuple[torch.Tensor, list[str | None]]:
    """Candidate images [n,3,S,S] in [-1,1] in a random order, and what each differs in (None: the match):
    an attribute, the relation told apart as in `difference`."""
    truth = caption_scene.without_boxes()
    variants = one_attribute_variants(truth, split)
    order = rng.permutation(len(variants))
    candidates = [(None, truth)] + [variants[order[i % len(variants)]] for i in range(n_candidates - 1)]
    candidates = [candidates[i] for i in rng.permutation(len(candidates))]
    images = [array_to_tensor(render(place(scene, pool, rng), image_size)) for _, scene in candidates]
    return torch.stack(images), [attribute and difference(truth, attribute, scene) for attribute, scene in candidates]


def main() -> None:
    args = parse_args()
    if args.candidates < 2:
        raise SystemExit("--candidates must be at least 2: the matching image and one variant")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    scorer = clip_rerank.load(args.clip, pretrained=args.pretrained, bf16=args.bf16)
    pool = layout_pool(args.layout_seed, args.layouts, args.image_size)

    top1 = {"all": [], "one object": [], "two objects": []}
    beats = defaultdict(list)  # difference -> per case: the match outscores every candidate differing so
    wrong_winner = Counter()  # what the top candidate differed in, when it was not the match
    for case in range(args.cases):
        rng = np.random.default_rng([args.seed, case])
        scene = scene_at(args.seed, case, args.image_size, args.split)
        images, differs_in = build_case(scene, args.candidates, pool, args.image_size, args.split, rng)
        scores = scorer.score(scene.caption, images)
        match = differs_in.index(None)
        hit = bool(scores.argmax() == match)  # argmax takes the first of equal scores: a tie is not a hit
        top1["all"].append(hit)
        top1["one object" if len(scene.objects) == 1 else "two objects"].append(hit)
        if not hit:
            wrong_winner[differs_in[int(scores.argmax())]] += 1
        for group in DIFFERENCES:
            rivals = [i for i, d in enumerate(differs_in) if d and d.startswith(group)]
            if rivals:
                beats[group].append(bool(scores[match] > scores[rivals].max()))

    result = {
        "clip": str(args.clip),
        "cases": args.cases,
        "candidates": args.candidates,
        "split": args.split,
        "seed": args.seed,
        "layout_seed": args.layout_seed,
        "top1": {group: float(np.mean(hits)) for group, hits in top1.items() if hits},
        "cases_per_group": {group: len(hits) for group, hits in top1.items()},
        "match_beats_all_differing_in": {d: float(np.mean(beats[d])) for d in DIFFERENCES if beats[d]},
        "wrong_winner_differed_in": {
            d: sum(n for w, n in wrong_winner.items() if w.startswith(d)) for d in DIFFERENCES
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"CLIP {args.clip}: {args.cases} cases x {args.candidates} candidates ({args.split} split, seed {args.seed})")
    for group, value in result["top1"].items():
        print(f"  top-1 {group:12s} {100 * value:5.1f}%  ({result['cases_per_group'][group]} cases)")
    print("  the match outscores every candidate that differs in")
    for group, value in result["match_beats_all_differing_in"].items():
        picks = result["wrong_winner_differed_in"][group]
        print(f"    {group:20s} {100 * value:5.1f}%  (wrong top-1 picks differing in it: {picks})")
    print(f"  {result['seconds']} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
