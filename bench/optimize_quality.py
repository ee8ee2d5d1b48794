"""Does VQGAN-CLIP steer toward the prompt? CLIP score before/after and the shapes parser's verdict.

    python bench/optimize_quality.py                                # the demo's shapes models (runs/demo/models.json)
    python bench/optimize_quality.py --vqgan V.ckpt --clip C.safetensors --steps 200 --seeds 10 --out runs/bench/optq

For each seed: start from random codes, optimise the prompt (default "a large red circle") for
--steps steps, and compare the start with the result: CLIP score (cosine of image and prompt
embeddings, whole image), whether `imagetext.describe` finds a red object, and whether
`imagetext.describe.matches` finds exactly what the prompt says. The parser only knows the shapes
world, so this is meaningful on shapes models only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# This folder holds bench/optimize.py, which would shadow the `optimize` package when run as a script.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import clip_rerank  # noqa: E402
import vqgan  # noqa: E402
from imagetext.describe import describe, matches  # noqa: E402
from imagetext.files import atomic_path  # noqa: E402
from imagetext.images import save_grid  # noqa: E402
from optimize.loop import OptimizeSettings, optimize  # noqa: E402
from optimize.prompts import TextPrompt  # noqa: E402
from vqgan_clip.optimize_command import demo_model  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqgan", default=None, help="default: runs/demo/models.json")
    parser.add_argument("--clip", default=None, help="default: runs/demo/models.json")
    parser.add_argument("--clip-pretrained", default=None)
    parser.add_argument("--prompt", default="a large red circle")
    parser.add_argument("--colour", default="red", help="the colour the parser should find")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the VQGAN's training size)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="folder for results.json and a before/after grid")
    return parser.parse_args()


def verdict(prompt: str, colour: str, image: torch.Tensor) -> dict:
    found = describe(image)
    return {
        "objects": [obj.phrase for obj in found],
        "colour_found": any(obj.color == colour for obj in found),
        "matches": matches(prompt, image),
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vqgan.load(args.vqgan or demo_model("vqgan")).to(args.device)
    scorer = clip_rerank.load(args.clip or demo_model("clip"), pretrained=args.clip_pretrained, device=args.device)
    size = args.size or model.config.ddconfig.resolution
    rows, befores, afters = [], [], []
    for seed in range(args.seeds):
        settings = OptimizeSettings(
            width=size, height=size, iterations=args.steps, cutn=args.cutn, lr=args.lr, seed=seed
        )
        result = optimize(model, scorer, [TextPrompt(args.prompt)], settings)
        before = model.decode_codes(result.initial_codes[None].to(args.device))[0]
        after = result.image
        scores = scorer.score(args.prompt, torch.stack([before, after]).to(args.device)).tolist()
        row = {
            "seed": seed,
            "clip_before": scores[0],
            "clip_after": scores[1],
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "before": verdict(args.prompt, args.colour, before),
            "after": verdict(args.prompt, args.colour, after),
        }
        rows.append(row)
        befores.append(before.cpu())
        afters.append(after.cpu())
        print(
            f"seed {seed}: CLIP {scores[0]:.4f} -> {scores[1]:.4f}, loss {row['loss_first']:.4f} -> {row['loss_last']:.4f}, "
            f"found {row['after']['objects'] or 'nothing'}"
        )

    n = len(rows)
    summary = {
        "prompt": args.prompt,
        "steps": args.steps,
        "seeds": n,
        "size": size,
        "clip_before_mean": sum(r["clip_before"] for r in rows) / n,
        "clip_after_mean": sum(r["clip_after"] for r in rows) / n,
        "clip_raised": sum(r["clip_after"] > r["clip_before"] for r in rows),
        f"{args.colour}_found_before": sum(r["before"]["colour_found"] for r in rows),
        f"{args.colour}_found_after": sum(r["after"]["colour_found"] for r in rows),
        "matches_before": sum(r["before"]["matches"] for r in rows),
        "matches_after": sum(r["after"]["matches"] for r in rows),
    }
    print(f"\n{args.prompt!r}, {args.steps} steps, {n} seeds, {size}×{size}:")
    print(
        f"  CLIP score (mean)        {summary['clip_before_mean']:.4f} -> {summary['clip_after_mean']:.4f} "
        f"(raised in {summary['clip_raised']}/{n})"
    )
    print(
        f"  parser finds {args.colour:<10}  {summary[f'{args.colour}_found_before']}/{n} -> {summary[f'{args.colour}_found_after']}/{n}"
    )
    print(f"  parser matches prompt    {summary['matches_before']}/{n} -> {summary['matches_after']}/{n}")
    if args.out:
        out = Path(args.out)
        grid = save_grid(
            torch.stack(befores + afters),
            out / "before_after.png",
            nrow=n,
            metadata={"prompt": args.prompt, "rows": "top: start, bottom: result"},
        )
        with atomic_path(out / "results.json") as temporary:
            temporary.write_text(json.dumps({"summary": summary, "runs": rows}, indent=2) + "\n", encoding="utf-8")
        print(f"  wrote {grid} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
