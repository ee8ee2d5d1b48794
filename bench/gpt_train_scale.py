"""What a large prior costs to train, from a step measured here and the 6·N·T rule.

    python bench/gpt_train_scale.py                      # 8×512 prior (26M), 16×16 codes, batch 8, fp32
    python bench/gpt_train_scale.py --threads 1 …        # on cores shared with other jobs

It times training steps of the GPT prior (forward, backward, AdamW) on random tokens and prints the
achieved FLOP/s, counting per token 6·N (N = parameters outside the embeddings, the rule of Kaplan et
al. 2020) plus 6·n_layer·T·n_embd for attention scores over a T-token context (forward 2·L·T·d, times 3 with backward; causal: half of it). Then it
scales to a target prior (default: 300M non-embedding parameters on 3M image–caption pairs, 16×16
codes + 64 caption tokens): tokens and FLOPs per epoch, CPU-hours at the FLOP/s measured here, and
GPU-hours at an assumed fraction of a GPU's peak (`--gpu-tflops`, `--mfu`; no GPU was measured).
Last, the bytes a code-shard sample takes on disk (int16 codes + caption, as `vqgan-clip tokenize`
writes them), beside the raw pixels it stands for.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gpt_prior.model import GPT, GPTConfig
from imagetext.code_shards import write_code_shard
from imagetext.training import compile_in_place

CAPTION = "a small purple square below a large blue circle, seen from above, on a plain background"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=8)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--grid", type=int, default=16, help="the code grid is grid×grid")
    parser.add_argument("--codebook", type=int, default=16384)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--text-vocab", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (as model.compile does)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as trainer.precision bf16-mixed does)")
    parser.add_argument("--target-params", type=float, default=300e6, help="non-embedding parameters of the target")
    parser.add_argument("--target-layers", type=int, default=24, help="its depth (for the attention term)")
    parser.add_argument("--target-width", type=int, default=1024, help="its width (for the attention term)")
    parser.add_argument("--pairs", type=float, default=3e6, help="image–caption pairs in an epoch")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed fraction of that peak reached")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    return parser.parse_args()


def non_embedding_parameters(model: GPT) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters() if not isinstance(_module(model, name), torch.nn.Embedding)
    )


def _module(model: torch.nn.Module, parameter_name: str) -> torch.nn.Module:
    return model.get_submodule(parameter_name.rsplit(".", 1)[0])


def flops_per_token(non_embedding: float, n_layer: int, context: int, n_embd: int) -> float:
    """Training FLOPs per token: 6·N for the weights, 6·L·T·d for causal attention scores and values."""
    return 6 * non_embedding + 6 * n_layer * context * n_embd


def time_steps(model: GPT, config: GPTConfig, batch_size: int, steps: int, bf16: bool = False) -> float:
    """Seconds per training step (forward, backward, AdamW) on random tokens; the median of `steps`
    after 2 untimed ones (which take the compile, if any)."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, config.text_vocab_size, (batch_size, config.text_len), generator=generator)
    codes = torch.randint(0, config.image_vocab_size, (batch_size, *config.image_grid), generator=generator)
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(text, codes).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def code_shard_bytes(grid: int, codebook: int, n: int = 1000) -> float:
    codes = torch.randint(0, codebook, (n, grid, grid))
    with tempfile.TemporaryDirectory() as folder:
        path = write_code_shard(Path(folder) / "shard.safetensors", codes, [[CAPTION]] * n)
        return path.stat().st_size / n


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig(
        text_vocab_size=args.text_vocab,
        text_len=args.text_len,
        image_vocab_size=args.codebook,
        image_grid=(args.grid, args.grid),
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    model = GPT(config).train()
    if args.compile:
        compile_in_place(model.blocks)
    context = args.text_len + args.grid * args.grid
    n_body = non_embedding_parameters(model)
    seconds = time_steps(model, config, args.batch_size, args.steps, args.bf16)
    tokens = args.batch_size * context
    achieved = tokens * flops_per_token(n_body, args.n_layer, context, args.n_embd) / seconds
    print(
        f"measured: {args.n_layer}x{args.n_embd} prior, {model.num_parameters() / 1e6:.1f}M parameters "
        f"({n_body / 1e6:.1f}M outside embeddings), batch {args.batch_size} x {context} tokens, "
        f"{torch.get_num_threads()} threads: {seconds * 1000:.0f} ms/step, {tokens / seconds:,.0f} tokens/s, "
        f"{achieved / 1e9:.1f} GFLOP/s ({'bf16 autocast' if args.bf16 else 'fp32'}{', compiled' if args.compile else ''})"
    )

    tokens_per_epoch = args.pairs * context
    flops_epoch = tokens_per_epoch * flops_per_token(args.target_params, args.target_layers, context, args.target_width)
    gpu_rate = args.gpu_tflops * 1e12 * args.mfu
    gpu_hours = flops_epoch / gpu_rate / 3600
    print(
        f"target: {args.target_params / 1e6:.0f}M non-embedding parameters ({args.target_layers}x{args.target_width}), "
        f"{args.pairs / 1e6:.1f}M pairs x {context} tokens = {tokens_per_epoch / 1e9:.2f}B tokens an epoch, "
        f"{flops_epoch:.2e} FLOPs an epoch"
    )
    print(
        f"  here ({torch.get_num_threads()} CPU threads) at the measured rate: {flops_epoch / achieved / 3600:,.0f} hours an epoch"
    )
    print(
        f"  on GPUs at {args.mfu:.0%} of {args.gpu_tflops:.0f} TFLOP/s (assumed, not measured): "
        f"{gpu_hours:.2f} GPU-hours an epoch; wall time with ideal scaling: "
        + ", ".join(f"{n} GPUs {gpu_hours / n * 60:.1f} min" for n in args.gpus)
    )
    shard = code_shard_bytes(args.grid, args.codebook)
    pixels = (args.grid * 16) ** 2 * 3
    print(
        f"code shards: {shard:.0f} bytes a sample ({args.grid}x{args.grid} int16 codes + a {len(CAPTION)}-character "
        f"caption) vs {pixels:,} bytes of raw {args.grid * 16}px RGB (f16 VQGAN): {pixels / shard:.0f}x smaller; "
        f"{args.pairs / 1e6:.1f}M pairs take {shard * args.pairs / 1e9:.2f} GB"
    )


if __name__ == "__main__":
    main()
