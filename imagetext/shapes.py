"""The shapes world: a caption grammar, a renderer, and a dataset that is a pure function of (seed, index).

Captions follow exactly one of two forms:

    a {size} {color} {shape}
    a {size} {color} {shape} {relation} a {size} {color} {shape}

Objects are flat colours on black and never overlap (a gap of at least two pixels). The relation is
read between the objects' centres along the axis where they differ most, and the sampler keeps that
axis unambiguous, so a caption is true of its image and the parser in `imagetext.describe` can check it.

Some colour+shape pairs never appear in the `train` split; the `novel` split puts at least one of
them in every image, to test whether a model composes attributes it has only seen apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from imagetext.files import atomic_path
from imagetext.images import array_to_tensor
from imagetext.progress import ProgressBar

SIZES = ("small", "large")
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 245),
    "yellow": (245, 225, 40),
    "purple": (160, 60, 220),
    "orange": (250, 145, 30),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "to the left of", "to the right of")
NOVEL_PAIRS = frozenset({("yellow", "circle"), ("purple", "square"), ("orange", "triangle")})
SPLITS = ("train", "novel")

# Side of an object's bounding box as a fraction of the image side.
SIZE_FRACTION = {"small": 0.25, "large": 0.44}
MIN_IMAGE_SIZE = 16
OBJECT_GAP = 2  # pixels kept empty between two objects' boxes
RELATION_MARGIN = 2  # pixels by which the relation's axis must dominate the other axis


@dataclass(frozen=True)
class ShapeObject:
    size: str
    color: str
    shape: str
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scene:
    """One or two objects; with two, `relation` says where objects[0] is relative to objects[1]."""

    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    def without_boxes(self) -> Scene:
        """The same scene as a caption states it: objects and relation, no placement."""
        return replace(self, objects=tuple(replace(o, box=None) for o in self.objects))

    @property
    def caption(self) -> str:
        if len(self.objects) == 1:
            return self.objects[0].phrase
        first, second = self.objects
        return f"{first.phrase} {self.relation} {second.phrase}"

    def to_dict(self) -> dict:
        return {
            "caption": self.caption,
            "relation": self.relation,
            "objects": [
                {"size": o.size, "color": o.color, "shape": o.shape, "box": list(o.box) if o.box else None}
                for o in self.objects
            ],
        }


def object_side(size_word: str, image_size: int) -> int:
    return round(SIZE_FRACTION[size_word] * image_size)


def parse_caption(caption: str) -> Scene:
    """Read a grammar caption back into a Scene without boxes. Raises ValueError naming the problem."""
    words = caption.strip().lower().split()

    def read_object(tokens: list[str]) -> ShapeObject:
        if len(tokens) != 4 or tokens[0] != "a":
            raise ValueError(f"expected 'a SIZE COLOR SHAPE', got {' '.join(tokens)!r}")
        _, size, color, shape = tokens
        for word, vocabulary, kind in ((size, SIZES, "size"), (color, COLORS, "colour"), (shape, SHAPES, "shape")):
            if word not in vocabulary:
                raise ValueError(f"unknown {kind} {word!r} in {caption!r}; known: {', '.join(vocabulary)}")
        return ShapeObject(size, color, shape)

    if len(words) == 4:
        return Scene((read_object(words),))
    for relation in RELATIONS:
        relation_words = relation.split()
        n = len(relation_words)
        if len(words) == 8 + n and words[4 : 4 + n] == relation_words:
            return Scene((read_object(words[:4]), read_object(words[4 + n :])), relation)
    raise ValueError(f"{caption!r} is not a shapes caption: 'a SIZE COLOR SHAPE [RELATION a SIZE COLOR SHAPE]'")


def relation_between(first: ShapeObject, second: ShapeObject) -> str:
    """Where `first` is relative to `second`, judged on the axis where their centres differ most."""
    (x_a, y_a), (x_b, y_b) = first.center, second.center
    dx, dy = x_a - x_b, y_a - y_b
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def shape_mask(shape: str, box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Boolean [H, W] mask of a shape filling `box`, tested at pixel centres (no anti-aliasing)."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside_box = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if shape == "square":
        return inside_box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        radius_x, radius_y = (x1 - x0) / 2, (y1 - y0) / 2
        return ((xs - cx) / radius_x) ** 2 + ((ys - cy) / radius_y) ** 2 <= 1.0
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        half_width = (ys - y0) / (y1 - y0) * (x1 - x0) / 2
        return inside_box & (np.abs(xs - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, image_size: int) -> np.ndarray:
    """Draw a scene whose objects have boxes: uint8 [H, W, 3], flat colours on black."""
    canvas = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    for obj in scene.objects:
        canvas[shape_mask(obj.shape, obj.box, image_size, image_size)] = COLORS[obj.color]
    return canvas


def _draw_object(rng: np.random.Generator, split: str, force_novel: bool) -> ShapeObject:
    if force_novel:
        color, shape = sorted(NOVEL_PAIRS)[rng.integers(len(NOVEL_PAIRS))]
    else:
        while True:
            color = list(COLORS)[rng.integers(len(COLORS))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            if split != "train" or (color, shape) not in NOVEL_PAIRS:
                break
    return ShapeObject(SIZES[rng.integers(len(SIZES))], color, shape)


def _place(rng: np.random.Generator, obj: ShapeObject, image_size: int) -> ShapeObject:
    side = object_side(obj.size, image_size)
    x0, y0 = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
    return replace(obj, box=(x0, y0, x0 + side, y0 + side))


def _apart(a: ShapeObject, b: ShapeObject) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + OBJECT_GAP <= bx0 or bx1 + OBJECT_GAP <= ax0 or ay1 + OBJECT_GAP <= by0 or by1 + OBJECT_GAP <= ay0


def _clear_relation(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    (x_a, y_a), (x_b, y_b) = a.center, b.center
    margin = abs(abs(y_a - y_b) - abs(x_a - x_b))
    return margin >= RELATION_MARGIN and relation_between(a, b) == relation


def sample_scene(rng: np.random.Generator, image_size: int, split: str = "train") -> Scene:
    """Draw a random scene for `split` with every object placed; deterministic given `rng`'s state."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"shapes images must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    n_objects = 1 + int(rng.integers(2))
    novel_slot = int(rng.integers(n_objects)) if split == "novel" else -1
    objects = [_draw_object(rng, split, force_novel=(i == novel_slot)) for i in range(n_objects)]
    if n_objects == 1:
        return Scene((_place(rng, objects[0], image_size),))
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    while True:  # rejection sampling; a layout exists for every pair of sizes at >= MIN_IMAGE_SIZE
        first, second = (_place(rng, obj, image_size) for obj in objects)
        if _apart(first, second) and _clear_relation(first, second, relation):
            return Scene((first, second), relation)


OPPOSITE_RELATION = {
    "above": "below",
    "below": "above",
    "to the left of": "to the right of",
    "to the right of": "to the left of",
}

# Four symmetries of the square image, as maps of a box (x0, y0, x1, y1) in an image of side n. Between
# them they turn any relation into each of the other three; a square box stays a square box of the same side.
LAYOUT_SYMMETRIES = (
    lambda b, n: (n - b[2], b[1], n - b[0], b[3]),  # mirror left-right
    lambda b, n: (b[0], n - b[3], b[2], n - b[1]),  # mirror top-bottom
    lambda b, n: (b[1], b[0], b[3], b[2]),  # transpose: above <-> to the left of
    lambda b, n: (n - b[3], n - b[2], n - b[1], n - b[0]),  # anti-transpose: above <-> to the right of
)


def reflect(scene: Scene, image_size: int, relation: str | None = None) -> Scene:
    """The scene with its layout mapped by the symmetry of the square that turns its relation into `relation`
    (default: the opposite one), shapes kept upright.

    Every object keeps its colour, shape and size and its box moves to the mapped place; the distances
    between the objects are kept (swapped between the axes by a transpose), so the relation stays as clear
    as it was. The result is a valid scene of the same split whose caption differs from the original by the
    relation alone, which is the pair a contrastive model needs to see to learn relations (an image flip
    would turn triangles upside down). A scene without a relation is returned unchanged.
    """
    if scene.relation is None:
        return scene
    target = relation or OPPOSITE_RELATION[scene.relation]
    if target not in RELATIONS:
        raise ValueError(f"unknown relation {target!r}; use one of {RELATIONS}")
    for symmetry in LAYOUT_SYMMETRIES:
        objects = tuple(replace(o, box=symmetry(o.box, image_size)) for o in scene.objects)
        if relation_between(*objects) == target:
            return Scene(objects, target)
    raise AssertionError(f"no symmetry of the square turns {scene.relation!r} into {target!r}")  # unreachable


def scene_from_dict(values: dict) -> Scene:
    """The Scene of `Scene.to_dict()` output (a shapes item's "labels")."""
    objects = tuple(
        ShapeObject(o["size"], o["color"], o["shape"], tuple(o["box"]) if o.get("box") else None)
        for o in values["objects"]
    )
    return Scene(objects, values.get("relation"))


def scene_at(seed: int, index: int, image_size: int, split: str = "train") -> Scene:
    """The scene of item `index` of the shapes set with `seed`: the same inputs always give the same scene."""
    return sample_scene(np.random.default_rng([seed, SPLITS.index(split), index]), image_size, split)


class ShapesDataset(Dataset):
    """`n` shapes images generated on the fly, items `offset … offset+n-1` of the set with `seed`.

    Each item: {"image": float [3,S,S] in [-1,1], "caption": str, "labels": Scene.to_dict()} — the
    labels as plain dicts and lists, so batches move between devices like any other collection.
    """

    def __init__(self, n: int, image_size: int = 32, seed: int = 0, split: str = "train", offset: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; use one of {SPLITS}")
        self.n, self.image_size, self.seed, self.split, self.offset = n, image_size, seed, split, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.n:
            raise IndexError(index)
        scene = scene_at(self.seed, self.offset + index, self.image_size, self.split)
        return {
            "image": array_to_tensor(render(scene, self.image_size)),
            "caption": scene.caption,
            "labels": scene.to_dict(),
        }


def write_shapes_folder(out: str | Path, n: int, image_size: int = 32, seed: int = 0, split: str = "train") -> Path:
    """Write items 0…n-1 as an image–caption folder: `NNNNNN.png`, `.txt` (caption), `.json` (labels).

    Files that already exist are left as they are, so an interrupted run resumes where it stopped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for index in ProgressBar(range(n), desc=f"shapes {split} {image_size}px", unit="img"):
        stem = out / f"{index:06d}"
        if stem.with_suffix(".json").exists():
            continue
        scene = scene_at(seed, index, image_size, split)
        with atomic_path(stem.with_suffix(".png")) as temporary:
            Image.fromarray(render(scene, image_size)).save(temporary, format="PNG")
        stem.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
        with atomic_path(stem.with_suffix(".json")) as temporary:  # written last: marks the item complete
            temporary.write_text(json.dumps(scene.to_dict()), encoding="utf-8")
    return out
