"""The public taming-transformers VQGANs by the names VQGAN-CLIP users know, downloaded once into the cache.

    model = vqgan.load("vqgan_imagenet_f16_16384")     # first use: downloads model.yaml + last.ckpt

Each name has its config and checkpoint URLs (the authors' host first, then the mirrors the VQGAN-CLIP
scripts use). The files land in `cache_dir()/taming/NAME.yaml` and `NAME.ckpt` (the layout of the
VQGAN-CLIP scripts' `checkpoints/` folder, so files you already have can be copied in); the checkpoint
is moved into place only after it loads strictly with its config. COCO, FacesHQ and S-FLCKR are taming
*transformers*: their VQGAN is the first stage, which is what loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagetext.download import cache_dir, download
from vqgan.model import VQGAN
from vqgan.taming import from_taming, taming_config

HEIBOX = "https://heibox.uni-heidelberg.de/d"
MIRROR = "http://mirror.io.community/blob/vqgan"


@dataclass(frozen=True)
class PublicVQGAN:
    """Where one public taming VQGAN's two files are, and what it is."""

    about: str
    config_urls: tuple[str, ...]
    checkpoint_urls: tuple[str, ...]


def heibox(share: str, config: str = "configs/model.yaml", checkpoint: str = "ckpts/last.ckpt") -> dict:
    """The download links of a file share on the taming authors' host."""
    link = f"{HEIBOX}/{share}/files/?p=%2F{{}}&dl=1"
    return {
        "config_urls": (link.format(config.replace("/", "%2F")),),
        "checkpoint_urls": (link.format(checkpoint.replace("/", "%2F")),),
    }


def with_mirror(urls: dict, name: str) -> dict:
    return {
        "config_urls": (*urls["config_urls"], f"{MIRROR}/{name}.yaml"),
        "checkpoint_urls": (*urls["checkpoint_urls"], f"{MIRROR}/{name}.ckpt"),
    }


PUBLIC_VQGANS: dict[str, PublicVQGAN] = {
    "vqgan_imagenet_f16_1024": PublicVQGAN(
        "ImageNet, 16x downsampling, 1024 codes (958 MB)",
        **with_mirror(heibox("8088892a516d4e3baf92"), "vqgan_imagenet_f16_1024"),
    ),
    "vqgan_imagenet_f16_16384": PublicVQGAN(
        "ImageNet, 16x downsampling, 16384 codes (980 MB); VQGAN-CLIP's default",
        **with_mirror(heibox("a7530b09fed84f80a887"), "vqgan_imagenet_f16_16384"),
    ),
    "vqgan_gumbel_f8_8192": PublicVQGAN(
        "OpenImages, 8x downsampling, 8192 codes, Gumbel quantiser (376 MB)", **heibox("2e5662443a6b4307b470")
    ),
    "wikiart_1024": PublicVQGAN(
        "WikiArt, 16x downsampling, 1024 codes (958 MB)",
        config_urls=(f"{MIRROR}/wikiart.yaml",),
        checkpoint_urls=(f"{MIRROR}/wikiart.ckpt",),
    ),
    "wikiart_16384": PublicVQGAN(
        "WikiArt, 16x downsampling, 16384 codes (1 GB)",
        config_urls=(
            "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
            f"{MIRROR}/wikiart_16384.yaml",
        ),
        checkpoint_urls=(
            "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
            f"{MIRROR}/wikiart_16384.ckpt",
        ),
    ),
    "coco": PublicVQGAN(
        "COCO, the first stage of taming's COCO transformer (8.4 GB download)",
        config_urls=("https://dl.nmkd.de/ai/clip/coco/coco.yaml",),
        checkpoint_urls=("https://dl.nmkd.de/ai/clip/coco/coco.ckpt",),
    ),
    "faceshq": PublicVQGAN(
        "FFHQ + CelebA-HQ faces, the first stage of taming's FacesHQ transformer",
        config_urls=("https://drive.google.com/uc?export=download&id=1fHwGx_hnBtC8nsq7hesJvs-Klv-P0gzT",),
        checkpoint_urls=(
            "https://app.koofr.net/content/links/a04deec9-0c59-4673-8b37-3d696fe63a5d/files/get/last.ckpt"
            "?path=%2F2020-11-13T21-41-45_faceshq_transformer%2Fcheckpoints%2Flast.ckpt",
        ),
    ),
    "sflckr": PublicVQGAN(
        "S-FLCKR landscapes, the first stage of taming's S-FLCKR transformer",
        **heibox("73487ab6e5314cb5adba", "configs/2020-11-09T13-31-51-project.yaml", "checkpoints/last.ckpt"),
    ),
}


def public_names() -> list[str]:
    return list(PUBLIC_VQGANS)


def public_files(name: str, cache: Path | None = None, quiet: bool = False) -> tuple[Path, Path]:
    """The config and checkpoint of the public VQGAN `name`, downloaded into the cache on first use."""
    if name not in PUBLIC_VQGANS:
        raise ValueError(f"no public VQGAN named {name!r}; known: {', '.join(PUBLIC_VQGANS)}")
    entry, folder = PUBLIC_VQGANS[name], (cache or cache_dir()) / "taming"
    config = download(entry.config_urls, folder / f"{name}.yaml", f"{name} config", taming_config, quiet)
    checkpoint = download(
        entry.checkpoint_urls,
        folder / f"{name}.ckpt",
        f"{name} checkpoint",
        lambda temporary: from_taming(config, temporary),  # loads strictly with its config, or is not kept
        quiet,
    )
    return config, checkpoint


def load_public(name: str, cache: Path | None = None) -> VQGAN:
    """The public taming VQGAN `name` (see PUBLIC_VQGANS), in eval mode."""
    return from_taming(*public_files(name, cache))
