"""The GPT prior: one decoder-only transformer over `[caption tokens][image codes]` (DALL·E 1, stage 2).

    sequence   t0 t1 … t(L-1) | c0 c1 … c(N-1)        L = text_len, N = h·w codes in raster order
    input      t0 t1 … t(L-1) | c0 c1 … c(N-2)        the last code is never fed
    predicts   t1 t2 … c0     | c1 c2 … c(N-1)        position p predicts token p+1

Text and image tokens have their own embedding tables and their own output heads: the L-1 text
positions before the last predict caption tokens (text head), the last text position and every image
position predict image codes (image head), so an image position cannot emit a caption id. Positions
are learned: 1-D for the caption, row + column for the image grid. Blocks are pre-LayerNorm with
causal attention through `F.scaled_dot_product_attention`.

For sampling, `hidden_states` runs any contiguous chunk of the sequence; with a `KVCache` the chunk
continues where the cache ends, so a prompt is run once and each later step feeds one code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

DATA_SIZES = ("text_vocab_size", "image_vocab_size", "image_grid")  # GPTConfig fields the data sets
ADAMW_BETAS = (0.9, 0.95)  # GPT-2/3 and DALL·E: a shorter second-moment memory is steadier for transformers


@dataclass
class GPTConfig:
    """The prior's shape. The sizes its data decides (the tokenizer's vocabulary, the codebook size and
    the code grid) are None until filled in (GPTPriorModule does, from the tokenizer and the codes'
    manifest); a GPT needs them all."""

    text_len: int = 32  # caption ids per sample: tokens, <eot>, padding
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers
    text_loss_weight: float = 1.0  # DALL·E weighs caption : image cross-entropy as 1 : 7
    image_loss_weight: float = 7.0
    text_vocab_size: int | None = None  # the tokenizer's vocab_size
    image_vocab_size: int | None = None  # the VQGAN codebook size
    image_grid: tuple[int, int] | None = None  # (h, w) of the VQGAN code grid
    text_pad_id: int = 0  # the tokenizer's <pad> (GPTPriorModule sets it): padded caption positions are not predicted

    def __post_init__(self) -> None:
        if self.image_grid is not None:
            self.image_grid = tuple(self.image_grid)  # a YAML or JSON list becomes the (h, w) pair
            if len(self.image_grid) != 2 or min(self.image_grid) < 1:
                raise ValueError(f"GPTConfig.image_grid must be (h, w) with h, w >= 1, got {self.image_grid}")
        sizes = dict(
            text_vocab_size=self.text_vocab_size,
            text_len=self.text_len,
            image_vocab_size=self.image_vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
        )
        for name, value in sizes.items():
            if value is not None and value < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {value}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (
            self.text_loss_weight < 0
            or self.image_loss_weight < 0
            or self.text_loss_weight + self.image_loss_weight == 0
        ):
            raise ValueError("GPTConfig loss weights must be >= 0 and not both 0")

    @property
    def data_sizes(self) -> dict[str, object]:
        """The sizes the data decides, by field name."""
        return {name: getattr(self, name) for name in DATA_SIZES}

    @property
    def image_len(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @property
    def block_size(self) -> int:
        """The longest input the model runs: the caption and every code but the last."""
        return self.text_len + self.image_len - 1


class GPTOutput(NamedTuple):
    logits_text: Tensor  # [B, text_len-1, text_vocab_size]: predictions of text[:, 1:]
    logits_img: Tensor  # [B, h·w, image_vocab_size]: predictions of every code, in raster order
    loss: Tensor  # (w_text·loss_text + w_img·loss_img) / (w_text + w_img)
    loss_text: Tensor  # mean cross-entropy over the non-padding caption targets (0 when there are none)
    loss_img: Tensor  # mean cross-entropy over the codes


class KVCache:
    """Keys and values of every layer for the positions run so far, in buffers allocated once.

    Writing each step's keys into a pre-allocated buffer costs only the new entries; concatenating
    would copy the whole cache at every step. A buffer is created on a layer's first write, so it
    takes the device and dtype (bf16 under autocast) of the keys the layer produces.
    """

    def __init__(self, n_layer: int, capacity: int):
        self.capacity = capacity
        self.length = 0  # positions stored; the next chunk starts here
        self.keys: list[Tensor | None] = [None] * n_layer
        self.values: list[Tensor | None] = [None] * n_layer

    def append(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store a chunk's [B, heads, T, head_dim] keys/values after the cached ones; return all of them."""
        start, end = self.length, self.length + keys.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; running {start}..{end} overflows it")
        if self.keys[layer] is None:
            batch, heads, _, head_dim = keys.shape
            self.keys[layer] = keys.new_empty(batch, heads, self.capacity, head_dim)
            self.values[layer] = values.new_empty(batch, heads, self.capacity, head_dim)
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n_positions: int) -> None:
        self.length += n_positions


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.n_head = config.n_head
        self.layer_index = layer_index  # which KV cache slot is ours
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.out = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.out_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        if cache is not None:
            k, v = cache.append(self.layer_index, k, v)
        queries, keys = q.shape[2], k.shape[2]
        mask, is_causal = None, False
        if queries == keys:
            is_causal = True
        elif queries > 1:  # a chunk after cached positions: query i sees every key up to its own position
            mask = torch.ones(queries, keys, dtype=torch.bool, device=x.device).tril(keys - queries)
        # (one query after cached positions is the newest position: it sees every key, no mask)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_dropout(self.out(rearrange(y, "b h t d -> b t (h d)")))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attention = CausalSelfAttention(config, layer_index)
        self.mlp_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        unset = [name for name, value in config.data_sizes.items() if value is None]
        if unset:
            raise ValueError(
                f"GPTConfig {', '.join(unset)} unset: the data decides them (the tokenizer and the codes' "
                f"manifest; GPTPriorModule fills them in)"
            )
        self.config = config
        height, width = config.image_grid
        self.text_embedding = nn.Embedding(config.text_vocab_size, config.n_embd)
        self.image_embedding = nn.Embedding(config.image_vocab_size, config.n_embd)
        self.text_position = nn.Embedding(config.text_len, config.n_embd)
        self.image_row = nn.Embedding(height, config.n_embd)
        self.image_column = nn.Embedding(width, config.n_embd)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, index) for index in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.text_head = nn.Linear(config.n_embd, config.text_vocab_size, bias=False)
        self.image_head = nn.Linear(config.n_embd, config.image_vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2: scale the projections that add into the residual stream by depth, so it does not grow with n_layer
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.out.weight", "mlp.down.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def forward(self, text: Tensor, image_codes: Tensor) -> GPTOutput:
        """Teacher-forced logits and losses for captions [B, text_len] and codes [B, h, w] (or [B, h·w])."""
        config = self.config
        codes = self._check_inputs(text, image_codes)
        hidden = self.hidden_states(torch.cat([text, codes[:, :-1]], dim=1))
        logits_text = self.text_head(hidden[:, : config.text_len - 1])
        logits_img = self.image_head(hidden[:, config.text_len - 1 :])

        text_targets = text[:, 1:]
        n_text_targets = (text_targets != config.text_pad_id).sum().clamp(min=1)  # all padding: loss 0, not NaN
        loss_text = (
            F.cross_entropy(
                rearrange(logits_text.float(), "b t v -> (b t) v"),
                text_targets.flatten(),
                ignore_index=config.text_pad_id,
                reduction="sum",
            )
            / n_text_targets
        )
        loss_img = F.cross_entropy(rearrange(logits_img.float(), "b n v -> (b n) v"), codes.flatten())
        loss = (config.text_loss_weight * loss_text + config.image_loss_weight * loss_img) / (
            config.text_loss_weight + config.image_loss_weight
        )
        return GPTOutput(logits_text, logits_img, loss, loss_text, loss_img)

    def hidden_states(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final-norm hidden states [B, T, n_embd] of a chunk of the sequence.

        `tokens` [B, T] are the sequence's ids from position `start` on: caption ids while the position is
        below text_len, image codes after. `start` is 0 without a cache, else where the cache ends;
        the chunk's keys and values are added to the cache.
        """
        start = cache.length if cache is not None else 0
        x = self.embedding_dropout(self._embed(tokens, start))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.final_norm(x)

    def new_cache(self) -> KVCache:
        """An empty KV cache for one sampling run of the whole sequence."""
        return KVCache(self.config.n_layer, self.config.block_size)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on the Linear matrices; none on biases, LayerNorms and embeddings."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, parameter in module.named_parameters(recurse=False):
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(parameter)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        config = self.config
        end = start + tokens.shape[1]
        if end > config.block_size + 1:
            raise ValueError(
                f"positions {start}..{end} run past the sequence ({config.text_len} text + {config.image_len} image)"
            )
        n_text = min(max(config.text_len - start, 0), tokens.shape[1])  # how many of the chunk's tokens are caption ids
        parts = []
        if n_text:
            text_positions = torch.arange(start, start + n_text, device=tokens.device)
            parts.append(self.text_embedding(tokens[:, :n_text]) + self.text_position(text_positions))
        if n_text < tokens.shape[1]:
            image_positions = torch.arange(
                start + n_text - config.text_len, end - config.text_len, device=tokens.device
            )
            rows, columns = image_positions // config.image_grid[1], image_positions % config.image_grid[1]
            parts.append(self.image_embedding(tokens[:, n_text:]) + self.image_row(rows) + self.image_column(columns))
        return torch.cat(parts, dim=1)

    def _check_inputs(self, text: Tensor, image_codes: Tensor) -> Tensor:
        """Validate a training pair; return the codes flattened to [B, h·w]."""
        config = self.config
        check_text_tokens(text, config)
        if image_codes.dim() == 3:
            if tuple(image_codes.shape[1:]) != config.image_grid:
                raise ValueError(
                    f"image codes have grid {tuple(image_codes.shape[1:])}, the model expects {config.image_grid}"
                )
            image_codes = rearrange(image_codes, "b h w -> b (h w)")
        if image_codes.dim() != 2 or image_codes.shape[1] != config.image_len or image_codes.shape[0] != text.shape[0]:
            raise ValueError(
                f"image codes must be [B, h, w] or [B, h·w] with B={text.shape[0]}, grid {config.image_grid}; got {tuple(image_codes.shape)}"
            )
        if image_codes.dtype != torch.long:
            raise TypeError(f"image codes must be torch.long, got {image_codes.dtype}: convert with .long()")
        if image_codes.numel() and (image_codes.min() < 0 or image_codes.max() >= config.image_vocab_size):
            raise ValueError(
                f"image codes must lie in [0, {config.image_vocab_size}); is image_vocab_size the VQGAN's codebook size?"
            )
        return image_codes


def check_text_tokens(text: Tensor, config: GPTConfig) -> None:
    """Raise unless `text` is a LongTensor [B, text_len] of ids below text_vocab_size."""
    if text.dim() != 2 or text.shape[1] != config.text_len:
        raise ValueError(
            f"text must be [B, text_len={config.text_len}] ids (tokenizer.encode_batch(captions, {config.text_len})); got {tuple(text.shape)}"
        )
    if text.dtype != torch.long:
        raise TypeError(f"text must be torch.long, got {text.dtype}")
    if text.numel() and (text.min() < 0 or text.max() >= config.text_vocab_size):
        raise ValueError(
            f"text ids must lie in [0, {config.text_vocab_size}); was the model built with this tokenizer's vocab_size?"
        )


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
