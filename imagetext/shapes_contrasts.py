"""Shapes scenes that differ from a scene in one thing, and captions false of it in one thing: the
training signals from which CLIP learns to bind colours, shapes and sizes to objects and objects to
places (NegCLIP-style hard negatives, order swaps, reflected pairs), and the swaps zero-shot
attribute accuracy is measured with.

Items are described by their `labels` dicts (`imagetext.shapes.Scene.to_dict`), as shapes batches carry them.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from imagetext.images import array_to_tensor
from imagetext.shapes import (
    COLORS,
    OPPOSITE_RELATION,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    reflect,
    render,
    scene_from_dict,
)

ATTRIBUTES = ("color", "shape", "size", "relation")


def scene_from_labels(labels: dict) -> Scene:
    """The Scene (without boxes) of a shapes item's `labels` dict."""
    return scene_from_dict(labels).without_boxes()


def same_picture(a: Scene, b: Scene) -> bool:
    """Whether two box-less scenes describe the same pictures: equal, or their two objects named the other
    way round with the relation reversed ("a red circle above a blue square" = "a blue square below a red circle")."""
    if a.caption == b.caption:
        return True
    return len(a.objects) == 2 and b.relation == OPPOSITE_RELATION[a.relation] and a.objects == b.objects[::-1]


def one_attribute_swaps(scene: Scene, every_object: bool = False) -> dict[str, list[Scene]]:
    """For each attribute the scene has, the scenes that differ from it in that attribute alone: colour, shape
    and size of the first object (of each object with `every_object`), and the relation between two objects.
    A swap that shows the same picture as the scene (two identical objects, relation reversed) is left out."""
    swaps: dict[str, list[Scene]] = {"color": [], "shape": [], "size": []}
    for slot in range(len(scene.objects) if every_object else 1):
        old = scene.objects[slot]

        def with_object(new: ShapeObject, slot: int = slot) -> Scene:
            return replace(scene, objects=scene.objects[:slot] + (new,) + scene.objects[slot + 1 :])

        swaps["color"] += [with_object(replace(old, color=c)) for c in COLORS if c != old.color]
        swaps["shape"] += [with_object(replace(old, shape=s)) for s in SHAPES if s != old.shape]
        swaps["size"] += [with_object(replace(old, size=s)) for s in SIZES if s != old.size]
    if scene.relation is not None:
        swaps["relation"] = [replace(scene, relation=r) for r in RELATIONS if r != scene.relation]
    swaps = {name: [s for s in scenes if not same_picture(scene, s)] for name, scenes in swaps.items()}
    return {name: scenes for name, scenes in swaps.items() if scenes}


def hard_negative_captions(labels: list[dict], generator: torch.Generator) -> list[str]:
    """One caption per shapes item that is false of it by one attribute (any object's colour, shape or size,
    or the relation): the attribute is drawn uniformly among those the item has, then the swap uniformly."""
    captions = []
    for item in labels:
        swaps = list(one_attribute_swaps(scene_from_labels(item), every_object=True).values())
        choices = swaps[int(torch.randint(len(swaps), (), generator=generator))]
        captions.append(choices[int(torch.randint(len(choices), (), generator=generator))].caption)
    return captions


def order_swap_captions(labels: list[dict]) -> list[str]:
    """For each two-object shapes item with two different objects, the caption naming them the other way
    round with the same relation ("a red circle above a blue square" -> "a blue square above a red circle").

    It is false of the image and holds exactly the true caption's words, so only a text encoder that reads
    word order can reject it: a bag of words cannot tell which object a relation puts where.
    """
    scenes = [scene_from_labels(item) for item in labels]
    return [
        replace(scene, objects=scene.objects[::-1]).caption
        for scene in scenes
        if len(scene.objects) == 2 and scene.objects[0] != scene.objects[1]
    ]


def with_reflected_pairs(
    images: torch.Tensor, captions: list[str], labels: list[dict], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[str], list[dict]]:
    """The batch followed by a reflection (`imagetext.shapes.reflect`) of each of its two-object scenes: its
    image rendered at the batch's size, its caption and its labels. The reflection takes the opposite
    relation; with a `generator`, a relation drawn uniformly among the three the scene does not have."""
    image_size = images.shape[-1]
    reflected = []
    for item in labels:
        if not item.get("relation"):
            continue
        relation = None
        if generator is not None:
            others = [r for r in RELATIONS if r != item["relation"]]
            relation = others[int(torch.randint(len(others), (), generator=generator))]
        reflected.append(reflect(scene_from_dict(item), image_size, relation))
    if not reflected:
        return images, captions, labels
    rendered = torch.stack([array_to_tensor(render(scene, image_size)) for scene in reflected])
    return (
        torch.cat([images, rendered.to(images.device, images.dtype)]),
        captions + [s.caption for s in reflected],
        labels + [s.to_dict() for s in reflected],
    )
