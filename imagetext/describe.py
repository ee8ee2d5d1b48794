"""Read a shapes image back into objects, and judge whether it shows what its caption says.

This is the ruler for generated images: `describe` segments the image by colour, keeps the
connected blobs big enough to be objects, names each blob's colour by the nearest palette entry,
its shape by the best-fitting template drawn in its bounding box, and its size by the box's side.
`matches(caption, image)` then checks every attribute of the caption, the relation included.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from imagetext.images import tensor_to_array
from imagetext.shapes import (
    COLORS,
    SHAPES,
    SIZE_FRACTION,
    Scene,
    ShapeObject,
    object_side,
    parse_caption,
    relation_between,
    shape_mask,
)

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_COLOR_NAMES = list(COLORS)
FOREGROUND_LEVEL = 80  # a pixel whose brightest channel is below this is background
MIN_AREA_FRACTION = 0.4  # a blob smaller than this share of a small square is noise, not an object


def _as_array(image: torch.Tensor | np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return tensor_to_array(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.uint8)


def _best_shape(blob: np.ndarray, box: tuple[int, int, int, int]) -> str:
    """The template (circle, square, triangle) with the highest overlap (IoU) with the blob."""
    height, width = blob.shape
    scores = {}
    for shape in SHAPES:
        template = shape_mask(shape, box, height, width)
        scores[shape] = (template & blob).sum() / max((template | blob).sum(), 1)
    return max(scores, key=scores.get)


def describe(image: torch.Tensor | np.ndarray | Image.Image) -> list[ShapeObject]:
    """The objects in a shapes image ([3,H,W] tensor in [-1,1], uint8 [H,W,3] array, or PIL), largest first."""
    pixels = _as_array(image)
    image_size = pixels.shape[0]
    foreground = pixels.max(axis=2) >= FOREGROUND_LEVEL
    distances = ((pixels[:, :, None, :].astype(np.float32) - _PALETTE) ** 2).sum(axis=-1)
    nearest_color = distances.argmin(axis=-1)
    min_area = MIN_AREA_FRACTION * object_side("small", image_size) ** 2
    size_threshold = image_size * (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) / 2

    objects = []
    labels, n_blobs = ndimage.label(foreground)
    for blob_id in range(1, n_blobs + 1):
        blob = labels == blob_id
        area = int(blob.sum())
        if area < min_area:
            continue
        rows, cols = np.nonzero(blob)
        x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
        color = _COLOR_NAMES[np.bincount(nearest_color[blob], minlength=len(_COLOR_NAMES)).argmax()]
        side = max(x1 - x0, y1 - y0)
        size = "large" if side >= size_threshold else "small"
        box = (x0, y0, x1, y1)
        objects.append((area, ShapeObject(size, color, _best_shape(blob, box), box)))
    return [obj for _, obj in sorted(objects, key=lambda pair: -pair[0])]


ERROR_KINDS = ("count", "size", "color", "shape", "relation")


def _attribute_errors(expected: ShapeObject, found: ShapeObject) -> set[str]:
    return {kind for kind in ("size", "color", "shape") if getattr(expected, kind) != getattr(found, kind)}


def scene_errors(expected: Scene, found: list[ShapeObject]) -> set[str]:
    """What `found` gets wrong about the caption's scene, as a subset of ERROR_KINDS (empty: a match).

    A wrong number of objects is "count" alone. With two objects, the pairing of found to named objects
    that gets the fewest things wrong is the one judged (so a swapped pair is a relation error, not two
    colour errors).
    """
    if len(found) != len(expected.objects):
        return {"count"}
    if len(found) == 1:
        return _attribute_errors(expected.objects[0], found[0])
    pairings = []
    for first, second in itertools.permutations(found):
        errors = _attribute_errors(expected.objects[0], first) | _attribute_errors(expected.objects[1], second)
        if relation_between(first, second) != expected.relation:
            errors.add("relation")
        pairings.append(errors)
    return min(pairings, key=len)


def scene_matches(expected: Scene, found: list[ShapeObject]) -> bool:
    """True when `found` holds exactly the caption's objects, and for two, in the caption's relation."""
    return not scene_errors(expected, found)


def scene_key(found: list[ShapeObject]) -> str:
    """What the parser found, as one string that is the same for the same scene however it is listed:
    the object phrases, and for two objects the smaller of the two ways to caption them."""
    phrases = [obj.phrase for obj in found]
    if len(found) != 2:
        return " + ".join(sorted(phrases)) or "nothing"
    first, second = found
    return min(
        f"{phrases[0]} {relation_between(first, second)} {phrases[1]}",
        f"{phrases[1]} {relation_between(second, first)} {phrases[0]}",
    )


def matches(caption: str, image: torch.Tensor | np.ndarray | Image.Image) -> bool:
    """Does the image show every attribute of the shapes caption (sizes, colours, shapes, relation)?"""
    return scene_matches(parse_caption(caption), describe(image))
