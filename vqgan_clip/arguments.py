"""Command-line values checked as they are parsed, before anything loads: finite, in range, with why.

    parser.add_argument("--temperature", type=number(above=0))
    parser.add_argument("--size", type=whole(1, MAX_IMAGE_SIDE, why="..."), nargs=2)

A bad value ends the program with one line, `vqgan-clip generate: error: --temperature: …`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from imagetext.checkpoints import check_device

# Sides above these would ask for tens of gigabytes before any work is done: a VQGAN decoder's
# activations at 2048×2048 already run to several GB (optimize also keeps their gradients).
MAX_IMAGE_SIDE = 2048
MAX_SHAPES_SIDE = 1024  # the shapes renderer draws 32-256 px scenes; 20,000 at 1024 px are ~60 GB of PNG


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, as every other error of the program is."""

    def error(self, message: str):
        sys.exit(f"{self.prog}: error: {message.removeprefix('argument ')} (see {self.prog} --help)")


def number(above: float | None = None, at_least: float | None = None, at_most: float | None = None) -> Callable:
    """A finite float (nan and inf are refused) within the given bounds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {text}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be >= {at_least:g}, got {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be <= {at_most:g}, got {text}")
        return value

    return parse


def device(text: str) -> str:
    """A torch device name that this machine has (`cuda` where torch sees no GPU is refused)."""
    try:
        check_device(text)
    except RuntimeError as error:  # torch.device's own refusal of a name
        raise argparse.ArgumentTypeError(str(error).splitlines()[0]) from None
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def whole(at_least: int, at_most: int | None = None, why: str = "") -> Callable:
    """An int within [at_least, at_most]; `why` says what the upper bound protects (the lower one where
    there is no upper)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        reason = f" ({why})" if why else ""
        if value < at_least:
            raise argparse.ArgumentTypeError(f"must be >= {at_least}{reason if at_most is None else ''}, got {value}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be <= {at_most}{reason}, got {value}")
        return value

    return parse
