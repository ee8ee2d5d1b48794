"""The VQGAN autoencoder: Encoder -> quant_conv -> quantizer -> post_quant_conv -> Decoder.

The layout (and so every state_dict key) follows taming-transformers' `VQModel`, so public taming
checkpoints load strictly (see vqgan/taming.py). The architecture is set by taming's `ddconfig`
fields, kept under their taming names in `AutoencoderConfig`:

    image [B,3,H,W] ─ conv_in ─ per level i: num_res_blocks × (ResnetBlock [+ AttnBlock]), Downsample
      ─ mid (ResnetBlock, AttnBlock, ResnetBlock) ─ norm_out, swish, conv_out ─► z [B,z_channels,h,w]
    z ─ conv_in ─ mid ─ per level i from the deepest up: (num_res_blocks+1) × (ResnetBlock [+ AttnBlock]),
      Upsample ─ norm_out, swish, conv_out ─► image

Level i works at resolution `resolution / 2**i`; a level gets attention blocks when that resolution
is listed in `attn_resolutions` (decided from the config's `resolution`, not the input's size, as in
taming). Images are [-1, 1]; the decoder's output is not bounded, `decode_codes` clamps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from imagetext.configs import config_from_dict
from vqgan.quantize import QuantizerConfig, QuantizerOutput, build_quantizer

GROUPS = 32  # GroupNorm groups: every channel count in the network must be a multiple of this


def _nearest_multiples(size: int, factor: int) -> str:
    below, above = (size // factor) * factor, (size // factor + 1) * factor
    return f"{below} or {above}" if below > 0 else str(above)


@dataclass
class AutoencoderConfig:
    """taming's `ddconfig`: the shape of the Encoder and of the Decoder that mirrors it.
    Defaults: the ImageNet f16 VQGAN."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 256
    double_z: bool = False

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if not self.ch_mult:
            raise ValueError("ddconfig.ch_mult is empty; give one channel multiplier per resolution level, e.g. [1, 2]")
        if self.double_z:
            raise ValueError("ddconfig.double_z is true, which is for KL autoencoders; a VQGAN needs double_z: false")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % GROUPS]
        if bad:
            raise ValueError(
                f"ddconfig: channel counts {bad} (ch × ch_mult) are not multiples of {GROUPS} "
                f"(GroupNorm groups); use ch a multiple of {GROUPS}"
            )
        if self.resolution % self.downsample_factor:
            raise ValueError(
                f"ddconfig.resolution {self.resolution} is not a multiple of the downsample factor "
                f"{self.downsample_factor} (2**(len(ch_mult)-1)); use "
                f"{_nearest_multiples(self.resolution, self.downsample_factor)}"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def level_channels(self, level: int) -> int:
        return self.ch * self.ch_mult[level]

    def level_has_attention(self, level: int) -> bool:
        return self.resolution // 2**level in self.attn_resolutions

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AutoencoderConfig:
        return config_from_dict(cls, values, "ddconfig")


@dataclass
class VQGANConfig:
    """A whole VQGAN: the autoencoder shape, the codebook size and how codes are learned."""

    ddconfig: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    embed_dim: int = 256
    n_embed: int = 1024
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        self.ddconfig = AutoencoderConfig.from_dict(self.ddconfig)
        self.quantizer = config_from_dict(QuantizerConfig, self.quantizer, "quantizer")
        if self.embed_dim < 1 or self.n_embed < 2:
            raise ValueError(
                f"embed_dim {self.embed_dim} / n_embed {self.n_embed}: use embed_dim >= 1 and n_embed >= 2"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VQGANConfig:
        """From plain nested dicts, e.g. a YAML file: {ddconfig: {...}, embed_dim, n_embed, quantizer: {...}}."""
        return config_from_dict(cls, values, "VQGAN config")

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts and lists, ready for YAML."""
        values = asdict(self)
        for key in ("ch_mult", "attn_resolutions"):
            values["ddconfig"][key] = list(values["ddconfig"][key])
        return values


def swish(x: Tensor) -> Tensor:
    return F.silu(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv1 → norm2 → swish → dropout → conv2, plus the input (1×1 `nin_shortcut` if channels change)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1×1 conv projections; residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        q, k, v = (rearrange(proj(h), "b c x y -> b 1 (x y) c") for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as taming
        return x + self.proj_out(rearrange(h, "b 1 (x y) c -> b c x y", x=height, y=width))


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by one, then a 3×3 stride-2 conv (or 2×2 average pooling)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then a 3×3 conv (unless resamp_with_conv is off)."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks) and `attn` (empty, or one AttnBlock after each block).
    The Encoder gives every level but the deepest a `downsample`, the Decoder every level but 0 an `upsample`."""

    def __init__(self, channels: list[tuple[int, int]], attention: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin, cout, dropout) for cin, cout in channels)
        self.attn = nn.ModuleList(AttnBlock(cout) for _, cout in channels) if attention else nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return x


class Middle(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, z_channels, H/f, W/f] with f = 2**(len(ch_mult)-1)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        levels = len(config.ch_mult)
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, 3, padding=1)
        self.down = nn.ModuleList()
        channels = config.ch
        for i in range(levels):
            out = config.level_channels(i)
            level = Level(
                [(channels, out)] + [(out, out)] * (config.num_res_blocks - 1),
                config.level_has_attention(i),
                config.dropout,
            )
            if i != levels - 1:
                level.downsample = Downsample(out, config.resamp_with_conv)
            self.down.append(level)
            channels = out
        self.mid = Middle(channels, config.dropout)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, out_ch, h·f, w·f]. `up[i]` is level i; they run from the deepest up."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        levels = len(config.ch_mult)
        channels = config.level_channels(levels - 1)
        self.conv_in = nn.Conv2d(config.z_channels, channels, 3, padding=1)
        self.mid = Middle(channels, config.dropout)
        up_levels: list[Level] = []
        for i in reversed(range(levels)):
            out = config.level_channels(i)
            level = Level(
                [(channels, out)] + [(out, out)] * config.num_res_blocks, config.level_has_attention(i), config.dropout
            )
            if i != 0:
                level.upsample = Upsample(out, config.resamp_with_conv)
            up_levels.insert(0, level)
            channels = out
        self.up = nn.ModuleList(up_levels)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VQGAN(nn.Module):
    """Images [B,3,H,W] in [-1,1] <-> code grids LongTensor [B, H/f, W/f].

    `forward(x)` returns (reconstruction, QuantizerOutput) for training; `encode_codes` and
    `decode_codes` are what the later stages use. Works in channels_last memory format and under
    bf16 autocast (the codebook lookup itself always runs in float32).
    """

    def __init__(self, config: VQGANConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = config if isinstance(config, VQGANConfig) else VQGANConfig.from_dict(config)
        dd = self.config.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        self.quantize = build_quantizer(self.config.quantizer, self.config.n_embed, self.config.embed_dim)
        self.quant_conv = nn.Conv2d(dd.z_channels, self.config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.config.embed_dim, dd.z_channels, 1)

    @property
    def codebook_size(self) -> int:
        return self.config.n_embed

    @property
    def downsample_factor(self) -> int:
        return self.config.ddconfig.downsample_factor

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's last conv weight: where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight

    def code_grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """The code grid (h, w) for an image of this size; ValueError if the encoder cannot divide it."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"image size {height}×{width} is not a multiple of this VQGAN's downsample factor {f}; "
                f"resize or crop to a multiple of {f} (height {_nearest_multiples(height, f)}, "
                f"width {_nearest_multiples(width, f)})"
            )
        return height // f, width // f

    def encode(self, x: Tensor) -> QuantizerOutput:
        if x.ndim != 4 or x.shape[1] != self.config.ddconfig.in_channels:
            raise ValueError(f"expected images [B,{self.config.ddconfig.in_channels},H,W], got shape {tuple(x.shape)}")
        self.code_grid_shape(*x.shape[-2:])
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantised latents [B, embed_dim, h, w] -> images (unbounded; training compares them unclamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        quantized = self.encode(x)
        return self.decode(quantized.z_q), quantized

    @torch.no_grad()
    def encode_codes(self, x: Tensor) -> Tensor:
        """Images [B,3,H,W] in [-1,1] -> LongTensor codes [B, H/f, W/f]."""
        return self.encode(x).codes

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """LongTensor codes [B, h, w] -> images [B,3,h·f,w·f] clamped to [-1,1]."""
        if codes.ndim != 3 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"expected integer codes [B,h,w], got {codes.dtype} of shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes range {int(codes.min())}..{int(codes.max())} is outside this codebook "
                f"(0..{self.codebook_size - 1}); were they made by a VQGAN with another codebook?"
            )
        return self.decode(self.quantize.embed_codes(codes.long())).clamp(-1.0, 1.0)
