"""Vector quantisers: snap each encoder vector to a codebook entry.

`VectorQuantizer` is taming-transformers' nearest-neighbour quantiser (same `embedding.weight` key,
same straight-through estimator, same "legacy" β placement) plus, by config, the things taming lacks
for codebook usage: l2-normalised (cosine) codes, a low-dimensional factorised lookup, EMA codebook
updates and restart of dead codes from recent encoder outputs. `GumbelQuantizer` loads and runs
taming's GumbelVQ checkpoints. `codebook_usage`, `perplexity` and `CodebookUsage` measure how much of
the codebook a model actually uses.

Lookup always runs in float32 (also under bf16 autocast): nearest-neighbour search in bf16 picks
the wrong code often enough to matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from imagetext.seeding import keyed_generator

QUANTIZER_KINDS = ("vq", "gumbel")


@dataclass
class QuantizerConfig:
    """How codes are picked and learned. The defaults are taming's VQModel."""

    kind: str = "vq"  # "vq": nearest neighbour (taming's VQModel); "gumbel": taming's GumbelVQ
    beta: float = 0.25  # commitment weight
    legacy: bool = True  # taming's β placement, used by every public checkpoint (see VectorQuantizer)
    l2_normalize: bool = False  # cosine codes: compare unit vectors
    codebook_dim: int | None = None  # factorised lookup: project to this many dims, look up there
    ema: bool = False  # learn the codebook by exponential moving averages instead of gradients
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    restart_unused_after: int | None = None  # restart codes unused for this many training steps
    restart_threshold: float | None = None  # (EMA only) restart codes whose EMA cluster size falls below this
    restart_buffer_size: int = 4096  # how many recent encoder vectors restarts draw from
    seed: int = 0  # seeds restart draws and Gumbel noise
    kl_weight: float = 5e-4  # gumbel only: weight of the KL term to a uniform prior
    temperature: float = 1.0  # gumbel only: softmax temperature while training

    def __post_init__(self) -> None:
        if self.kind not in QUANTIZER_KINDS:
            raise ValueError(f"quantizer.kind is {self.kind!r}; use one of {', '.join(QUANTIZER_KINDS)}")
        vq_only = {
            "l2_normalize": False,
            "codebook_dim": None,
            "ema": False,
            "restart_unused_after": None,
            "restart_threshold": None,
        }
        if self.kind == "gumbel":
            set_options = [name for name, off in vq_only.items() if getattr(self, name) != off]
            if set_options:
                raise ValueError(
                    f"quantizer options {', '.join(set_options)} apply to kind 'vq' only; remove them or use kind: vq"
                )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"quantizer.ema_decay is {self.ema_decay}; use a value between 0 and 1, e.g. 0.99")
        if self.codebook_dim is not None and self.codebook_dim < 1:
            raise ValueError(f"quantizer.codebook_dim is {self.codebook_dim}; use a positive size or null")
        if self.restart_unused_after is not None and self.restart_unused_after < 1:
            raise ValueError(
                f"quantizer.restart_unused_after is {self.restart_unused_after}; use a number of steps >= 1 or null"
            )
        if self.restart_threshold is not None:
            if not self.ema:
                raise ValueError(
                    "quantizer.restart_threshold needs ema: true (it reads the EMA cluster sizes); "
                    "use restart_unused_after without EMA"
                )
            if not 0.0 < self.restart_threshold < 1.0:
                raise ValueError(
                    f"quantizer.restart_threshold is {self.restart_threshold}; use a value in (0, 1): "
                    "a restarted code starts at cluster size 1"
                )
        if self.restart_buffer_size < 1:
            raise ValueError(f"quantizer.restart_buffer_size is {self.restart_buffer_size}; use >= 1")


@dataclass
class QuantizerOutput:
    """What a quantiser returns for a batch of encoder outputs."""

    z_q: Tensor  # [B, embed_dim, h, w] quantised latents; gradients pass straight through to the encoder
    codes: Tensor  # LongTensor [B, h, w]
    loss: Tensor  # scalar: codebook + commitment loss (vq) or the KL term (gumbel)
    usage: Tensor  # scalar: fraction of the codebook used by this batch
    perplexity: Tensor  # scalar: exp(entropy) of this batch's code histogram


def code_histogram(codes: Tensor, n_embed: int) -> Tensor:
    """How often each code occurs: LongTensor [n_embed]."""
    return torch.bincount(codes.flatten(), minlength=n_embed)


def usage_from_counts(counts: Tensor) -> Tensor:
    """Fraction of codes with a non-zero count."""
    return (counts > 0).float().mean()


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp of the entropy of a code histogram: n_embed for a uniform spread, 1 for a single code."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -torch.special.xlogy(p, p).sum()
    return entropy.exp().float()


def codebook_usage(codes: Tensor, n_embed: int) -> Tensor:
    """Fraction of the `n_embed` codes that occur in `codes` (any shape)."""
    return usage_from_counts(code_histogram(codes, n_embed))


def perplexity(codes: Tensor, n_embed: int) -> Tensor:
    """exp(entropy) of the histogram of `codes` (any shape)."""
    return perplexity_from_counts(code_histogram(codes, n_embed))


class CodebookUsage:
    """Accumulates a code histogram over many batches (e.g. one validation epoch).

    `compute()` sums the histogram over processes when torch.distributed is running, so every rank
    must call it (Lightning's `on_validation_epoch_end` does).
    """

    def __init__(self, n_embed: int) -> None:
        self.counts = torch.zeros(n_embed, dtype=torch.long)

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, codes: Tensor) -> None:
        self.counts = self.counts.to(codes.device)
        self.counts += code_histogram(codes.detach(), self.counts.numel())

    def compute(self) -> dict[str, float]:
        counts = self.counts.clone()
        _all_reduce_sum(counts)
        return {"usage": usage_from_counts(counts).item(), "perplexity": perplexity_from_counts(counts).item()}


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(*tensors: Tensor) -> None:
    if _distributed():
        for t in tensors:
            dist.all_reduce(t)


def _broadcast_from_first_rank(*tensors: Tensor) -> None:
    if _distributed():
        for t in tensors:
            dist.broadcast(t, src=0)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser (VQ-VAE), state_dict-compatible with taming's.

    Loss: with c = mean((sg(z) - q)^2) (moves codes) and m = mean((z - sg(q))^2) (commits the encoder),
    `legacy=True` gives m + β·c, the placement taming shipped by mistake and every public checkpoint
    was trained with; `legacy=False` gives c + β·m as in the VQ-VAE paper.

    Options beyond taming (each adds its own parameters or buffers, so taming key sets are unchanged
    when all are off):
    - `l2_normalize`: look up unit vectors (cosine similarity), as in ViT-VQGAN.
    - `codebook_dim`: `project_in` maps z to a small space, the lookup happens there, `project_out` maps back.
    - `ema`: the codebook follows EMA cluster means (`ema_cluster_size`, `ema_embed_sum` buffers)
      instead of the codebook loss; the codebook then takes no gradient.
    - restarts: a code unused for `restart_unused_after` steps, or (EMA) whose cluster size falls under
      `restart_threshold`, is replaced by an encoder vector drawn from the last `restart_buffer_size`
      ones. Draws use a generator seeded with (seed, step), so a resumed run repeats them exactly.

    Codebook statistics update only in training mode, inside `forward`. Under torch.distributed the
    histograms and EMA sums are summed over ranks and restarted codes are copied from rank 0, so every
    rank keeps the same codebook.
    """

    def __init__(self, config: QuantizerConfig, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.lookup_dim = lookup_dim = config.codebook_dim or embed_dim

        self.embedding = nn.Embedding(n_embed, lookup_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)  # taming's init
        if config.codebook_dim is not None:
            self.project_in = nn.Linear(embed_dim, config.codebook_dim)
            self.project_out = nn.Linear(config.codebook_dim, embed_dim)
        else:
            self.project_in = self.project_out = nn.Identity()

        if config.ema:
            self.embedding.weight.requires_grad_(False)
            # Starting each cluster at size 1 around its initial code keeps unused codes where they
            # are instead of dividing by ~0 on the first update.
            self.register_buffer("ema_cluster_size", torch.ones(n_embed))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())
        self.restarts = config.restart_unused_after is not None or config.restart_threshold is not None
        if self.restarts:
            self.register_buffer("steps_since_used", torch.zeros(n_embed, dtype=torch.long))
            self.register_buffer("recent_vectors", torch.zeros(config.restart_buffer_size, lookup_dim))
            self.register_buffer("recent_written", torch.zeros((), dtype=torch.long))
            self.register_buffer("update_step", torch.zeros((), dtype=torch.long))

    def codebook(self) -> Tensor:
        """The vectors codes are compared with, in lookup space: [n_embed, lookup_dim]."""
        weight = self.embedding.weight.float()
        return F.normalize(weight, dim=-1) if self.config.l2_normalize else weight

    def forward(self, z: Tensor) -> QuantizerOutput:
        batch, _, height, width = z.shape
        with torch.autocast(z.device.type, enabled=False):
            if self.training and self.restarts:
                # Restart before the lookup: editing the codebook after it entered this step's graph
                # would invalidate tensors saved for backward.
                self._restart_dead_codes()
            vectors = self.project_in(rearrange(z.float(), "b c h w -> (b h w) c"))
            if self.config.l2_normalize:
                vectors = F.normalize(vectors, dim=-1)
            codebook = self.codebook()
            with torch.no_grad():
                codes = self.nearest_codes(vectors, codebook)
            quantized = F.embedding(codes, codebook)

            codebook_loss = F.mse_loss(quantized, vectors.detach())
            commitment_loss = F.mse_loss(vectors, quantized.detach())
            if self.config.legacy:
                loss = commitment_loss + self.config.beta * codebook_loss
            else:
                loss = codebook_loss + self.config.beta * commitment_loss
            quantized = vectors + (quantized - vectors).detach()  # straight-through estimator

            counts = code_histogram(codes, self.n_embed)
            if self.training and (self.config.ema or self.restarts):
                self._update_statistics(vectors.detach(), codes, counts)
            z_q = rearrange(self.project_out(quantized), "(b h w) c -> b c h w", b=batch, h=height, w=width)
        return QuantizerOutput(
            z_q=z_q.to(z.dtype),
            codes=rearrange(codes, "(b h w) -> b h w", b=batch, h=height, w=width),
            loss=loss,
            usage=usage_from_counts(counts),
            perplexity=perplexity_from_counts(counts),
        )

    @staticmethod
    def nearest_codes(vectors: Tensor, codebook: Tensor) -> Tensor:
        """The index of each lookup-space vector's nearest codebook row: vectors [N, d], codebook [K, d] -> [N].

        ||v - e||² = ||v||² - 2 v·e + ||e||², the same expansion (and tie-breaking) as taming. VQGAN-CLIP's
        straight-through step asks this too, so its codes are the quantiser's own.
        """
        distances = vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t() + codebook.pow(2).sum(1)
        return distances.argmin(dim=1)

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Codes [B, h, w] -> quantised latents [B, embed_dim, h, w] (what the decoder's input conv takes)."""
        vectors = self.project_out(F.embedding(codes, self.codebook()))
        return rearrange(vectors, "b h w c -> b c h w").to(self.embedding.weight.dtype)

    @torch.no_grad()
    def _update_statistics(self, vectors: Tensor, codes: Tensor, counts: Tensor) -> None:
        counts = counts.float()
        if self.config.ema:
            embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, codes, vectors)
            _all_reduce_sum(counts, embed_sum)
            self.ema_cluster_size.lerp_(counts, 1 - self.config.ema_decay)
            self.ema_embed_sum.lerp_(embed_sum, 1 - self.config.ema_decay)
            total = self.ema_cluster_size.sum()
            # Laplace smoothing keeps a cluster that shrank to ~0 from dividing by zero
            smoothed = (
                (self.ema_cluster_size + self.config.ema_eps) / (total + self.n_embed * self.config.ema_eps) * total
            )
            self.embedding.weight.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))
        else:
            _all_reduce_sum(counts)  # restarts need the usage of every rank
        if self.restarts:
            self.steps_since_used = torch.where(counts > 0, 0, self.steps_since_used + 1)
            self._remember(vectors)
            self.update_step += 1

    def _generator(self, device: torch.device) -> torch.Generator:
        return keyed_generator(self.config.seed, int(self.update_step), device=device)

    def _remember(self, vectors: Tensor) -> None:
        size = self.recent_vectors.shape[0]
        if vectors.shape[0] > size:
            keep = torch.randperm(vectors.shape[0], generator=self._generator(vectors.device), device=vectors.device)
            vectors = vectors[keep[:size]]
        slots = (self.recent_written + torch.arange(vectors.shape[0], device=vectors.device)) % size
        self.recent_vectors[slots] = vectors
        self.recent_written += vectors.shape[0]

    @torch.no_grad()
    def _restart_dead_codes(self) -> None:
        if int(self.update_step) == 0:
            return
        dead = torch.zeros(self.n_embed, dtype=torch.bool, device=self.steps_since_used.device)
        if self.config.restart_unused_after is not None:
            dead |= self.steps_since_used >= self.config.restart_unused_after
        if self.config.restart_threshold is not None:
            dead |= self.ema_cluster_size < self.config.restart_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        available = self.recent_written.clamp(max=self.recent_vectors.shape[0])
        draws = torch.rand(n_dead, generator=self._generator(dead.device), device=dead.device)
        fresh = self.recent_vectors[(draws * available).long()]
        self.embedding.weight[dead] = fresh.to(self.embedding.weight.dtype)
        self.steps_since_used[dead] = 0
        synced = [self.embedding.weight.data]
        if self.config.ema:
            self.ema_embed_sum[dead] = fresh
            self.ema_cluster_size[dead] = 1.0
            synced += [self.ema_embed_sum, self.ema_cluster_size]
        _broadcast_from_first_rank(*synced)


class GumbelQuantizer(nn.Module):
    """taming's GumbelQuantize: a 1×1 conv `proj` gives logits over codes, `embed` holds the codebook.

    Training samples a straight-through Gumbel-softmax (noise from a seeded generator) and the loss is
    `kl_weight` times the KL divergence to a uniform prior. In eval mode the code is the argmax of
    the logits, so encoding is deterministic (taming adds Gumbel noise even in eval).
    """

    def __init__(self, config: QuantizerConfig, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.n_embed = n_embed
        self.proj = nn.Conv2d(embed_dim, n_embed, 1)  # over quant_conv's embed_dim channels
        self.embed = nn.Embedding(n_embed, embed_dim)
        self._noise: torch.Generator | None = None

    def forward(self, z: Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            logits = F.conv2d(z.float(), self.proj.weight.float(), self.proj.bias.float())
            if self.training:
                soft = ((logits + self._gumbel_noise(logits)) / self.config.temperature).softmax(dim=1)
                codes = soft.argmax(dim=1)
                hard = rearrange(F.one_hot(codes, self.n_embed).to(soft.dtype), "b h w n -> b n h w")
                one_hot = hard + soft - soft.detach()
                z_q = torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight.float())
            else:
                codes = logits.argmax(dim=1)
                z_q = rearrange(self.embed(codes).float(), "b h w d -> b d h w")
            probs = logits.softmax(dim=1)
            kl = torch.sum(probs * torch.log(probs * self.n_embed + 1e-10), dim=1).mean()
        counts = code_histogram(codes, self.n_embed)
        return QuantizerOutput(
            z_q=z_q.to(z.dtype),
            codes=codes,
            loss=self.config.kl_weight * kl,
            usage=usage_from_counts(counts),
            perplexity=perplexity_from_counts(counts),
        )

    def _gumbel_noise(self, logits: Tensor) -> Tensor:
        if self._noise is None or self._noise.device != logits.device:
            self._noise = torch.Generator(device=logits.device).manual_seed(self.config.seed)
        uniform = torch.rand(logits.shape, generator=self._noise, device=logits.device)
        return -torch.log(-torch.log(uniform.clamp(1e-20, 1.0)) + 1e-20)

    def embed_codes(self, codes: Tensor) -> Tensor:
        return rearrange(self.embed(codes), "b h w d -> b d h w")


def build_quantizer(config: QuantizerConfig, n_embed: int, embed_dim: int) -> VectorQuantizer | GumbelQuantizer:
    if config.kind == "gumbel":
        return GumbelQuantizer(config, n_embed, embed_dim)
    return VectorQuantizer(config, n_embed, embed_dim)
