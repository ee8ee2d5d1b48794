"""Random draws that are a function of named integers, so a resumed or re-ordered run draws the same.

    generator = keyed_generator(seed, epoch, index)   # this item's draws in this epoch, in any worker

A worker's global generator depends on how many workers there are and what they did before; a draw
from a keyed generator depends only on its keys. Every seed a run derives from its configured seed
(per epoch, step, batch, item or rank) comes from here; a user's own seed (generate --seed) seeds a
generator directly.
"""

from __future__ import annotations

import numpy as np
import torch


def keyed_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on `device` whose seed is a hash of the integer `keys` (e.g. seed, epoch, index).

    numpy's SeedSequence mixes the keys, so nearby key tuples such as (0, 1, 2) and (0, 2, 1) give
    unrelated streams.
    """
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed)
