"""The models a command runs, chosen by one set of flags shared by generate, eval and optimize.

    choice = ModelChoice(gpt="runs/gpt/last.ckpt", clip="shapes")     # or ModelChoice.from_args(args)
    models = load_models(choice, prior=True, clip=True)
    models.checkpoints     # {"gpt": {path, sha256}, "vqgan": {...}, "clip": {spec, pretrained, sha256}}

A model left out is the shipped one ("shapes"), or with `demo_models` the one the latest `vqgan-clip
demo --train` recorded. A prior decodes with the VQGAN it names unless another is given. Every output
records `checkpoints`: where each model came from and the sha256 of its file.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

import clip_rerank
import gpt_prior
import vqgan
from gpt_prior.checkpoint import PriorBundle, resolve_vqgan
from imagetext.files import atomic_path, file_sha256
from imagetext.shipped import resolve, resolve_if_shipped
from vqgan.pretrained import PUBLIC_VQGANS, public_files
from vqgan_clip.arguments import device as device_name

DEMO_DIR = Path("runs/demo")
DEMO_MODELS_FILE = "models.json"  # {"vqgan": path, "gpt": path, "clip": path}, written by `vqgan-clip demo --train`
SHIPPED_DEFAULT = "shapes"  # the shipped models' short name (imagetext.shipped)


def default_device() -> str:
    """cuda where torch sees a GPU, else cpu: the one default of every command that runs a model."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ModelChoice:
    """Which models to run: the shared flags' values (None: the default model)."""

    gpt: str | None = None
    vqgan: str | None = None
    vqgan_config: str | None = None  # a taming-transformers model.yaml, with vqgan_checkpoint
    vqgan_checkpoint: str | None = None
    clip: str | None = None
    clip_pretrained: str | None = None
    demo_models: bool = False
    device: str = field(default_factory=default_device)
    bf16: bool = False

    def __post_init__(self) -> None:
        if bool(self.vqgan_config) != bool(self.vqgan_checkpoint):
            raise ValueError("a taming VQGAN needs both --vqgan-config and --vqgan-checkpoint")
        if self.vqgan_config and self.vqgan:
            raise ValueError("give either --vqgan or --vqgan-config/--vqgan-checkpoint, not both")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelChoice:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def add_model_options(parser: argparse.ArgumentParser, gpt_use: str = "") -> None:
    """The model flags of generate, eval and optimize; left out, the shipped models ("shapes")."""
    group = parser.add_argument_group("models (default: the shipped shapes models)")
    group.add_argument(
        "--gpt",
        metavar="CKPT|NAME",
        help=f"GPT prior{gpt_use}: a .ckpt of `gpt-prior fit`, a .safetensors file, or a shipped name",
    )
    group.add_argument(
        "--vqgan",
        metavar="CKPT|NAME",
        help="VQGAN (default: the one the GPT prior names): a .ckpt of `vqgan fit`, a .safetensors file, a shipped "
        "name, or a public taming VQGAN by name (vqgan_imagenet_f16_16384, …; downloaded once)",
    )
    group.add_argument(
        "--vqgan-config", metavar="YAML", help="a taming-transformers model.yaml (with --vqgan-checkpoint)"
    )
    group.add_argument(
        "--vqgan-checkpoint", metavar="CKPT", help="a taming-transformers checkpoint (with --vqgan-config)"
    )
    group.add_argument(
        "--clip",
        metavar="SPEC",
        help="CLIP: a .ckpt of `clip-rerank fit`, a .safetensors file, a shipped name or an open_clip architecture",
    )
    group.add_argument("--clip-pretrained", metavar="TAG|FILE", help="pretrained weights for an open_clip architecture")
    group.add_argument(
        "--demo-models",
        action="store_true",
        help="where no model is named, use those of the latest `vqgan-clip demo --train` (runs/demo/models.json)",
    )
    group.add_argument(
        "--device", type=device_name, default=default_device(), help="cuda, cuda:1, cpu, … (default: cuda if any)"
    )
    group.add_argument("--bf16", action="store_true", help="bf16 autocast for every model")


@dataclass
class Models:
    """The models a command runs, loaded once: the prior (None when not asked for), the VQGAN, and CLIP
    (None: nothing is scored), with where each came from."""

    prior: PriorBundle | None
    vqgan: vqgan.VQGAN
    scorer: clip_rerank.Scorer | None
    checkpoints: dict[str, dict[str, str | None] | None]  # "gpt", "vqgan", "clip": where each came from, sha256
    device: torch.device
    bf16: bool = False


def load_models(choice: ModelChoice, *, prior: bool, clip: bool) -> Models:
    """Load the prior (if `prior`), the VQGAN (the one given, else the prior's, else the default) and CLIP
    (if `clip` or one is named). Every error is raised here, before anything is drawn or written."""
    device = torch.device(choice.device)
    bundle, gpt_file, vqgan_spec = None, None, choice.vqgan
    if prior:
        gpt_file = resolve("gpt_prior", choice.gpt or default_model("gpt", choice.demo_models))
        bundle = gpt_prior.load(gpt_file, map_location=device)
        if choice.demo_models and choice.gpt is None and vqgan_spec is None and not choice.vqgan_config:
            vqgan_spec = default_model("vqgan", True)  # the demo's VQGAN goes with the demo's prior
    taming = None  # (model.yaml, checkpoint) of a taming VQGAN: given, or a public one by name
    if choice.vqgan_config:
        taming = (choice.vqgan_config, choice.vqgan_checkpoint)
    else:
        if bundle is not None and vqgan_spec not in PUBLIC_VQGANS:
            vqgan_spec = resolve_vqgan(bundle, vqgan_spec)  # warns if its sha256 is not the prior's VQGAN's
        vqgan_spec = str(vqgan_spec or default_model("vqgan", choice.demo_models))
        if vqgan_spec in PUBLIC_VQGANS:
            taming = public_files(vqgan_spec)  # downloaded once
    if taming is not None:
        decoder = vqgan.from_taming(*taming)
        vqgan_record = {"config": str(Path(taming[0]).resolve()), **file_record(Path(taming[1]))}
    else:
        vqgan_file = resolve("vqgan", vqgan_spec)
        decoder = vqgan.load(vqgan_file)
        vqgan_record = file_record(vqgan_file)
    if bundle is not None:
        check_codebook(bundle, decoder.codebook_size, vqgan_record["path"])
    clip_spec = choice.clip or (default_model("clip", choice.demo_models) if clip else None)
    scorer = None
    if clip_spec is not None:  # a shipped name as its file, so that its sha256 is recorded
        clip_spec = resolve_if_shipped("clip_rerank", clip_spec)
        scorer = clip_rerank.load(clip_spec, pretrained=choice.clip_pretrained, device=device, bf16=choice.bf16)
    checkpoints = {
        "gpt": None if gpt_file is None else file_record(gpt_file),
        "vqgan": vqgan_record,
        "clip": None if clip_spec is None else clip_description(clip_spec, choice.clip_pretrained),
    }
    return Models(bundle, decoder.to(device), scorer, checkpoints, device, choice.bf16)


def file_record(path: Path) -> dict[str, str]:
    """A model file as an output records it: its full path and sha256."""
    return {"path": str(path.resolve()), "sha256": file_sha256(path)}


def clip_description(spec: str, pretrained: str | None) -> dict[str, str | None]:
    """Where a CLIP came from: its spec and pretrained tag or file, with the sha256 of whichever is a file."""

    def described(name: str | None) -> str | None:  # files by their full path, names and tags as given
        return str(Path(name).resolve()) if name is not None and Path(name).is_file() else name

    weights = next((Path(p) for p in (spec, pretrained) if p is not None and Path(p).is_file()), None)
    return {
        "spec": described(spec),
        "pretrained": described(pretrained),
        "sha256": None if weights is None else file_sha256(weights),
    }


def check_codebook(prior: PriorBundle, codebook_size: int, vqgan_name: str | Path) -> None:
    """The prior's codes must index this VQGAN's codebook."""
    if codebook_size != prior.config.image_vocab_size:
        raise ValueError(
            f"VQGAN {vqgan_name} has {codebook_size} codes, but the GPT prior draws "
            f"{prior.config.image_vocab_size}; pass the prior's own VQGAN with --vqgan ({prior.vqgan_path})"
        )


def demo_models(demo_dir: str | Path = DEMO_DIR) -> dict[str, Path]:
    """The models of the latest `vqgan-clip demo --train`: {"vqgan", "gpt", "clip"} from `demo_dir`/models.json,
    whose relative paths are relative to `demo_dir` (as `write_demo_models` writes them)."""
    demo_dir = Path(demo_dir)
    file = demo_dir / DEMO_MODELS_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"--demo-models: {file} (written by `vqgan-clip demo --train`) not found; "
            f"run `vqgan-clip demo --train`, or leave out --demo-models for the shipped models"
        )
    entries = json.loads(file.read_text(encoding="utf-8"))
    missing = [key for key in ("vqgan", "gpt", "clip") if key not in entries]
    if missing:
        raise ValueError(f"{file} lacks {', '.join(missing)}; run `vqgan-clip demo --train` again to rewrite it")
    return {key: demo_dir / entries[key] for key in ("vqgan", "gpt", "clip")}


def write_demo_models(demo_dir: str | Path, *, vqgan: str | Path, gpt: str | Path, clip: str | Path) -> Path:
    """Write `demo_dir`/models.json, which `demo_models` reads (paths stored relative to `demo_dir`)."""
    demo_dir = Path(demo_dir)
    entries = {
        key: os.path.relpath(Path(path).resolve(), demo_dir.resolve())
        for key, path in (("vqgan", vqgan), ("gpt", gpt), ("clip", clip))
    }
    with atomic_path(demo_dir / DEMO_MODELS_FILE) as temporary:
        temporary.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return demo_dir / DEMO_MODELS_FILE


def default_model(key: str, use_demo: bool, demo_dir: str | Path = DEMO_DIR) -> str:
    """The model used where none is named: the shipped one ("shapes"), or with `use_demo` the one the
    latest `vqgan-clip demo --train` recorded for `key` ("vqgan", "gpt" or "clip")."""
    return str(demo_models(demo_dir)[key]) if use_demo else SHIPPED_DEFAULT
