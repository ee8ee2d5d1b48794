"""Sampling image code grids from the GPT prior: KV cache, temperature, top-k, top-p, classifier-free guidance.

With the cache (the default) the caption is run once and each step feeds only the code drawn last,
reusing every earlier key and value. `use_cache=False` reruns the whole prefix at every step, as
taming-transformers' `Net2NetTransformer.sample` does; it is kept to test the cache against and to
benchmark. Both paths get their logits from `next_token_logits`.

Guidance stacks the conditional rows (the captions) and the unconditional rows (the empty caption)
in one batch, each with its own rows of the cache, and mixes their logits at every step:
`u + s·(c − u)`. Both streams are fed the same drawn code; the caption rows are never rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from gpt_prior.model import GPT, KVCache, check_text_tokens
from imagetext.progress import ProgressBar


@dataclass(frozen=True)
class SamplingSettings:
    """How codes are drawn, checked once here. The defaults are what generation uses where neither the
    caller nor the prior's saved defaults (`model.sampling` in its training config) say otherwise:
    classifier-free guidance at 3 (priors train with 10% empty captions for it) and a nucleus of 0.95,
    which drops the rare codes that decode as stray specks without making the candidates so alike that
    reranking has nothing to choose from. `sample`'s own keyword defaults are the plain draw (no filter,
    no guidance)."""

    temperature: float = 1.0
    top_k: int | None = None  # None: no top-k filter
    top_p: float | None = 0.95  # None or 1: no nucleus filter
    cfg_scale: float = 3.0  # 1: no guidance (and half the cost)
    batch_size: int | None = 32  # candidate rows drawn at once (None: all); part of the draw

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "cfg_scale"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"sampling {name} must be a finite number, got {value}")
        if self.temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"sampling top_k must be >= 1 (or None: no top-k filter), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must be in (0, 1] (1 or None: no nucleus filter), got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"sampling cfg_scale must be >= 0 (1: no guidance), got {self.cfg_scale}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"sampling batch_size must be >= 1 (or None: all at once), got {self.batch_size}")

    @classmethod
    def resolve(
        cls, saved: Mapping[str, Any] | None = None, given: Mapping[str, Any] | None = None
    ) -> SamplingSettings:
        """`given` values (None: not given) over a prior's `saved` defaults over the class defaults;
        top_k 0 turns top-k off. Keys that are no setting are ignored."""
        names = {field.name for field in fields(cls)}
        settings = {key: value for key, value in (saved or {}).items() if key in names}
        settings |= {key: value for key, value in (given or {}).items() if key in names and value is not None}
        if settings.get("top_k") == 0:
            settings["top_k"] = None
        return cls(**settings)


def sample(
    model: GPT,
    text_tokens: Tensor,
    n_candidates: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    empty_text_tokens: Tensor | None = None,
    generator: torch.Generator,
    use_cache: bool = True,
    batch_size: int | None = None,
    bf16: bool = False,
    progress: bool = False,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Draw `n_candidates` code grids for each of P captions: LongTensor [P·n_candidates, h, w].

    Rows are prompt-major: rows p·n … p·n+n−1 belong to caption p. `text_tokens` [P, text_len] come
    from `tokenizer.encode_batch`. Guidance runs when `empty_text_tokens` (the empty caption encoded,
    [text_len] or [1, text_len]) is given; `cfg_scale` ≠ 1 needs it, and scale 1 with it returns the
    unguided sample at twice the cost. `batch_size` caps the candidate rows run at once (guidance
    doubles the model batch). `generator` must live on the model's device; the same seed and settings
    give the same codes. `return_logits` also returns the guided logits of every step, before
    temperature and filtering: float [P·n_candidates, h·w, image_vocab_size].
    """
    config = model.config
    device = next(model.parameters()).device
    check_text_tokens(text_tokens, config)
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    SamplingSettings(temperature, top_k, top_p, cfg_scale, batch_size)  # refuses what no draw can use
    if cfg_scale != 1.0 and empty_text_tokens is None:
        raise ValueError("cfg_scale != 1 needs empty_text_tokens=tokenizer.encode_batch([''], text_len)")
    if empty_text_tokens is not None:
        empty_text_tokens = empty_text_tokens.reshape(1, -1).to(device)
        check_text_tokens(empty_text_tokens, config)
    if generator.device != device:
        raise ValueError(
            f"generator is on {generator.device}, the model on {device}: make it with torch.Generator(device={str(device)!r})"
        )

    text_rows = text_tokens.to(device).repeat_interleave(n_candidates, dim=0)
    chunks = text_rows.split(batch_size or len(text_rows))

    def choose(logits: Tensor) -> Tensor:
        return draw(filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), generator)

    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ProgressBar(total=len(chunks) * config.image_len, desc="sampling codes", disable=not progress) as bar,
        ):
            results = [
                _sample_rows(model, chunk, empty_text_tokens, cfg_scale, use_cache, choose, return_logits, bar.update)
                for chunk in chunks
            ]
    finally:
        model.train(was_training)

    codes = rearrange(torch.cat([codes for codes, _ in results]), "b (h w) -> b h w", h=config.image_grid[0])
    if return_logits:
        return codes, torch.cat([logits for _, logits in results])
    return codes


def next_token_logits(model: GPT, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
    """Float logits [B, image_vocab_size] for the code after the last of `tokens`.

    Without a cache `tokens` is the whole prefix (caption, then the codes so far); with one it is
    the part the cache has not seen yet.
    """
    return model.image_head(model.hidden_states(tokens, cache)[:, -1]).float()


def classifier_free_guidance(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """`u + s·(c − u)`, written as `c + (s − 1)·(c − u)` so that scale 1 returns `c` exactly."""
    return conditional + (scale - 1.0) * (conditional - unconditional)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set all but the k largest logits of each row to −inf (ties with the k-th are kept)."""
    kth_largest = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep each row's smallest set of most likely tokens whose probability reaches p (nucleus)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # the most likely token always has 0 here
    drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= p)
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(
    logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Temperature, then top-k, then top-p (so p counts probability at this temperature)."""
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


def draw(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One token id per row [B], sampled from softmax(logits) with `generator`."""
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def _sample_rows(
    model: GPT,
    text: Tensor,
    empty_text: Tensor | None,
    cfg_scale: float,
    use_cache: bool,
    choose: Callable[[Tensor], Tensor],
    keep_logits: bool,
    on_step: Callable[[int], object],
) -> tuple[Tensor, Tensor | None]:
    """Codes [B, h·w] for B caption rows (and their guided logits [B, h·w, V] when `keep_logits`)."""
    image_len = model.config.image_len
    guided = empty_text is not None
    stream_text = torch.cat([text, empty_text.expand(len(text), -1)]) if guided else text  # conditional rows first
    n_streams = 2 if guided else 1
    codes = text.new_zeros(len(text), image_len)
    step_logits = []
    cache = model.new_cache() if use_cache else None
    for step in range(image_len):
        if not use_cache:
            tokens = torch.cat([stream_text, codes[:, :step].repeat(n_streams, 1)], dim=1)
        elif step == 0:
            tokens = stream_text
        else:
            tokens = codes[:, step - 1 : step].repeat(n_streams, 1)
        logits = next_token_logits(model, tokens, cache)
        if guided:
            conditional, unconditional = logits.chunk(2)
            logits = classifier_free_guidance(conditional, unconditional, cfg_scale)
        codes[:, step] = choose(logits)
        if keep_logits:
            step_logits.append(logits)
        on_step(1)
    return codes, torch.stack(step_logits, dim=1) if keep_logits else None
