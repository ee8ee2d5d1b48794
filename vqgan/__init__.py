"""The VQGAN stage: images <-> grids of discrete codes (taming-transformers compatible)."""

from vqgan.checkpoint import load, save
from vqgan.model import VQGAN, VQGANConfig
from vqgan.taming import from_taming

__all__ = ["VQGAN", "VQGANConfig", "from_taming", "load", "save"]
