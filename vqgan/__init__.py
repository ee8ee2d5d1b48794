"""The VQGAN stage: images <-> grids of discrete codes (taming-transformers compatible)."""

from vqgan.checkpoint import export_bundle, load
from vqgan.model import VQGAN, VQGANConfig
from vqgan.taming import from_taming

__all__ = ["VQGAN", "VQGANConfig", "export_bundle", "from_taming", "load"]
