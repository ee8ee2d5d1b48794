"""Image tokens per second of GPT-prior sampling: KV cache vs full recompute, fp32 vs bf16 autocast.

    python bench/gpt_sample.py                          # 32 candidates × 256 codes (16×16), ~27M parameters
    python bench/gpt_sample.py --recompute-tokens 32    # time the slow path over the first 32 codes only
    python bench/gpt_sample.py --threads 1 …            # on cores shared with other jobs (2 threads spin-wait)

Random weights: speed does not depend on what the model learned. The full-recompute path (what
taming-transformers' `Net2NetTransformer.sample` does) reruns the whole prefix for every code, so
its cost per code grows with the prefix. With `--recompute-tokens N < h·w` it is timed over the
first N codes only, on the same architecture with a 1×N grid (exactly the work of those N steps);
that rate overstates the whole-grid rate (the first steps are the cheapest), so the script also
times single recompute steps at 8 prefix lengths spread over the whole grid and sums the
interpolated step times into an estimate of the whole-grid recompute time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gpt_prior.model import GPT, GPTConfig
from gpt_prior.sample import next_token_logits, sample


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=32, help="code grids sampled in one batch")
    parser.add_argument("--grid", type=int, default=16, help="the code grid is grid×grid")
    parser.add_argument(
        "--recompute-tokens",
        type=int,
        default=None,
        help="time the recompute path over the first N codes (default: all)",
    )
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--image-vocab", type=int, default=1024)
    parser.add_argument("--text-vocab", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (bf16 autocast)")
    return parser.parse_args()


def build(args: argparse.Namespace, grid: tuple[int, int]) -> GPT:
    config = GPTConfig(
        text_vocab_size=args.text_vocab,
        text_len=args.text_len,
        image_vocab_size=args.image_vocab,
        image_grid=grid,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    torch.manual_seed(args.seed)
    return GPT(config).to(args.device).eval()


def tokens_per_second(
    model: GPT, text: torch.Tensor, args: argparse.Namespace, *, use_cache: bool, bf16: bool
) -> tuple[float, float]:
    """(image tokens/s, seconds) for one `sample` call of args.candidates grids."""
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    synchronize(args.device)
    start = time.perf_counter()
    codes = sample(model, text, args.candidates, generator=generator, use_cache=use_cache, bf16=bf16)
    synchronize(args.device)
    seconds = time.perf_counter() - start
    return codes.numel() / seconds, seconds


def estimated_recompute_seconds(
    model: GPT, text: torch.Tensor, args: argparse.Namespace, *, bf16: bool, points: int = 8
) -> float:
    """Seconds the recompute path would take over the whole grid: step i runs the caption and i codes,
    so time one step at `points` values of i from 0 to h·w−1 and sum the linear interpolation."""
    image_len = model.config.image_len
    rows = text.expand(args.candidates, -1)
    steps = torch.linspace(0, image_len - 1, points).round().long().tolist()
    seconds = []
    with torch.inference_mode(), torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=bf16):
        for step in steps:
            codes = torch.randint(0, args.image_vocab, (args.candidates, step), device=args.device)
            synchronize(args.device)
            start = time.perf_counter()
            next_token_logits(model, torch.cat([rows, codes], dim=1))
            synchronize(args.device)
            seconds.append(time.perf_counter() - start)
    return float(np.interp(np.arange(image_len), steps, seconds).sum())


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = (args.grid, args.grid)
    image_len = args.grid * args.grid
    recompute_tokens = min(args.recompute_tokens or image_len, image_len)
    model = build(args, grid)
    # the same architecture over a 1×N grid does exactly the work of the first N recompute steps
    recompute_model = model if recompute_tokens == image_len else build(args, (1, recompute_tokens))
    text = torch.randint(1, args.text_vocab, (1, args.text_len), generator=torch.Generator().manual_seed(args.seed)).to(
        args.device
    )

    print(
        f"device {args.device}, {torch.get_num_threads()} CPU threads; model {model.num_parameters() / 1e6:.1f}M parameters "
        f"(n_layer {args.n_layer}, n_head {args.n_head}, n_embd {args.n_embd}, text_len {args.text_len}, "
        f"image vocab {args.image_vocab}, grid {args.grid}×{args.grid})"
    )
    print(
        f"{args.candidates} candidates × {image_len} image tokens; recompute timed over the first {recompute_tokens} tokens"
    )

    warm_model, warm_args = build(args, (1, 2)), argparse.Namespace(**{**vars(args), "candidates": 2})
    for bf16 in (False, True):  # load kernels before timing (both, whatever is timed: it is cheap)
        tokens_per_second(warm_model, text, warm_args, use_cache=True, bf16=bf16)

    precisions = [(name == "bf16", name) for name in args.precisions.split(",")]
    rates = {}
    print(f"\n{'path':<10} {'precision':<9} {'tokens':>7} {'seconds':>9} {'tokens/s':>10}")
    for use_cache, path, path_model, n_tokens in [
        (True, "kv cache", model, image_len),
        (False, "recompute", recompute_model, recompute_tokens),
    ]:
        for bf16, precision in precisions:
            rate, seconds = tokens_per_second(path_model, text, args, use_cache=use_cache, bf16=bf16)
            rates[path, precision] = rate
            print(f"{path:<10} {precision:<9} {args.candidates * n_tokens:>7} {seconds:>9.2f} {rate:>10.1f}")
    if recompute_tokens < image_len:
        for bf16, precision in precisions:
            seconds = estimated_recompute_seconds(model, text, args, bf16=bf16)
            rates["recompute (est.)", precision] = args.candidates * image_len / seconds
            print(
                f"{'recompute':<10} {precision:<9} {args.candidates * image_len:>7} {seconds:>9.2f} {rates['recompute (est.)', precision]:>10.1f}"
                "  estimated from 8 timed steps"
            )

    print()
    for _, precision in precisions:
        ratio = rates["kv cache", precision] / rates["recompute", precision]
        if recompute_tokens == image_len:
            print(f"cached / recompute, {precision}: {ratio:.1f}×")
        else:
            estimate = rates["kv cache", precision] / rates["recompute (est.)", precision]
            print(
                f"cached / recompute, {precision}: {ratio:.1f}× against the first {recompute_tokens} recompute tokens (a lower bound); "
                f"≈{estimate:.1f}× over all {image_len} (estimated)"
            )
    for path in ("kv cache", "recompute") if len(precisions) == 2 else ():
        print(f"bf16 / fp32, {path}: {rates[path, 'bf16'] / rates[path, 'fp32']:.2f}×")


if __name__ == "__main__":
    main()
