import json
import re

import numpy as np
import pytest
import torch

from imagetext.describe import describe, matches, scene_errors, scene_key, scene_matches
from imagetext.images import array_to_tensor
from imagetext.shapes import (
    COLORS,
    NOVEL_PAIRS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesDataset,
    parse_caption,
    reflect,
    relation_between,
    render,
    scene_at,
    scene_from_dict,
    write_shapes_folder,
)

WORD = "|".join
ONE = rf"a ({WORD(SIZES)}) ({WORD(COLORS)}) ({WORD(SHAPES)})"
CAPTION = re.compile(rf"^{ONE}( ({WORD(RELATIONS)}) {ONE})?$")


def test_every_caption_follows_the_grammar_and_the_grammar_is_covered():
    seen_words, seen_relations, n_objects = set(), set(), set()
    for index in range(600):
        scene = scene_at(0, index, 32)
        assert CAPTION.match(scene.caption), scene.caption
        n_objects.add(len(scene.objects))
        for obj in scene.objects:
            seen_words.update((obj.size, obj.color, obj.shape))
        if scene.relation:
            seen_relations.add(scene.relation)
    assert seen_words == set(SIZES) | set(COLORS) | set(SHAPES)
    assert seen_relations == set(RELATIONS)
    assert n_objects == {1, 2}


def test_items_are_a_pure_function_of_seed_and_index():
    a, b = ShapesDataset(5, seed=3), ShapesDataset(5, seed=3)
    for i in range(5):
        assert a[i]["caption"] == b[i]["caption"]
        assert torch.equal(a[i]["image"], b[i]["image"])
    assert [a[i]["caption"] for i in range(5)] != [ShapesDataset(5, seed=4)[i]["caption"] for i in range(5)]
    offset = ShapesDataset(3, seed=3, offset=2)
    assert offset[0]["caption"] == a[2]["caption"]


def test_images_are_flat_colours_on_black_in_range():
    item = ShapesDataset(1, image_size=32, seed=0)[0]
    image = item["image"]
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert item["labels"] == scene_at(0, 0, 32).to_dict()
    pixels = render(scene_at(0, 0, 32), 32).reshape(-1, 3)
    allowed = {(0, 0, 0)} | set(COLORS.values())
    assert {tuple(p) for p in pixels} <= allowed


@pytest.mark.parametrize("size", [32, 64])
def test_objects_do_not_overlap_and_relations_hold(size):
    for index in range(300):
        scene = scene_at(1, index, size)
        if len(scene.objects) == 2:
            a, b = (np.zeros((size, size), bool) for _ in range(2))
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = scene.objects[0].box, scene.objects[1].box
            a[ay0:ay1, ax0:ax1] = True
            b[by0:by1, bx0:bx1] = True
            assert not (a & b).any()
            assert relation_between(*scene.objects) == scene.relation


def test_novel_pairs_are_held_out_of_train_and_present_in_novel():
    for index in range(500):
        train = scene_at(0, index, 32, "train")
        assert all((o.color, o.shape) not in NOVEL_PAIRS for o in train.objects)
        novel = scene_at(0, index, 32, "novel")
        assert any((o.color, o.shape) in NOVEL_PAIRS for o in novel.objects)


def test_caption_parse_round_trip_and_errors():
    for index in range(50):
        scene = scene_at(2, index, 32)
        parsed = parse_caption(scene.caption)
        assert parsed.caption == scene.caption
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        parse_caption("a small pink circle")
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a small red circle next to a large blue square")


SMALL_RED_CIRCLE_ABOVE_LARGE_BLUE_SQUARE = Scene(
    (ShapeObject("small", "red", "circle", (2, 2, 10, 10)), ShapeObject("large", "blue", "square", (2, 16, 16, 30))),
    "above",
)


@pytest.mark.parametrize("split", ["train", "novel"])
def test_parser_recovers_every_attribute_on_ground_truth(split):
    n, correct = 1000, 0
    for index in range(n):
        scene = scene_at(7, index, 32, split)
        correct += scene_matches(scene, describe(render(scene, 32)))
    assert correct / n >= 0.99


def test_parser_reads_tensors_and_rejects_wrong_captions():
    scene = SMALL_RED_CIRCLE_ABOVE_LARGE_BLUE_SQUARE
    image = array_to_tensor(render(scene, 32))
    assert matches("a small red circle above a large blue square", image)
    assert not matches("a small red circle below a large blue square", image)
    assert not matches("a small green circle above a large blue square", image)
    assert not matches("a large red circle above a large blue square", image)
    assert not matches("a small red triangle above a large blue square", image)
    assert not matches("a small red circle", image)  # an extra object is a mismatch
    found = describe(image)
    assert [(o.size, o.color, o.shape) for o in found] == [("large", "blue", "square"), ("small", "red", "circle")]


def test_scene_errors_name_what_is_wrong_and_scene_keys_ignore_listing_order():
    scene = SMALL_RED_CIRCLE_ABOVE_LARGE_BLUE_SQUARE
    found = describe(render(scene, 32))
    assert scene_errors(parse_caption("a small red circle above a large blue square"), found) == set()
    assert scene_errors(parse_caption("a small red circle below a large blue square"), found) == {"relation"}
    # the pairing with the fewest errors is judged: the swapped caption is a relation error, not colours
    assert scene_errors(parse_caption("a large blue square above a small red circle"), found) == {"relation"}
    assert scene_errors(parse_caption("a small green triangle above a large blue square"), found) == {"color", "shape"}
    assert scene_errors(parse_caption("a large red circle above a small blue square"), found) == {"size"}
    assert scene_errors(parse_caption("a small red circle"), found) == {"count"}
    assert scene_errors(parse_caption("a small red circle"), found[1:]) == set()
    assert scene_key(found) == scene_key(found[::-1]) == "a large blue square below a small red circle"
    assert scene_key([]) == "nothing"


def test_parser_ignores_specks_of_noise():
    scene = scene_at(0, 2, 32)
    pixels = render(scene, 32)
    pixels[0, 31] = COLORS["green"]  # a one-pixel speck is not an object
    assert scene_matches(scene, describe(pixels))


def test_write_shapes_folder_is_a_captioned_folder_and_resumes(tmp_path):
    out = write_shapes_folder(tmp_path / "shapes", n=6, image_size=32, seed=5)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(6)]
    labels = json.loads((out / "000003.json").read_text())
    assert (out / "000003.txt").read_text().strip() == labels["caption"] == scene_at(5, 3, 32).caption
    before = (out / "000000.png").stat().st_mtime_ns
    write_shapes_folder(out, n=8, image_size=32, seed=5)
    assert (out / "000000.png").stat().st_mtime_ns == before
    assert len(list(out.glob("*.png"))) == 8
    assert not list(out.glob(".*.tmp"))


def test_bad_split_and_size_are_clear_errors():
    with pytest.raises(ValueError, match="unknown shapes split"):
        ShapesDataset(1, split="test")
    with pytest.raises(ValueError, match="at least 16 px"):
        scene_at(0, 0, 8)


def test_reflected_scenes_differ_in_the_relation_alone_and_are_true():
    reflected = 0
    for index in range(80):
        scene = scene_at(0, index, 32)
        assert scene_from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
        mirror = reflect(scene, 32)
        if scene.relation is None:
            assert mirror == scene
            continue
        reflected += 1
        assert [o.phrase for o in mirror.objects] == [o.phrase for o in scene.objects]
        assert mirror.relation != scene.relation and reflect(mirror, 32) == scene
        assert matches(mirror.caption, render(mirror, 32))
        twins = scene.objects[0].phrase == scene.objects[1].phrase  # then both relations are true of both images
        assert twins or not matches(scene.caption, render(mirror, 32))
    assert reflected > 20


def test_reflections_reach_every_relation_keeping_objects_and_clearance():
    reached = 0
    for index in range(80):
        scene = scene_at(0, index, 32)
        if scene.relation is None:
            continue
        for relation in RELATIONS:
            moved = reflect(scene, 32, relation)
            assert moved.relation == relation and [o.phrase for o in moved.objects] == [o.phrase for o in scene.objects]
            assert all(0 <= v <= 32 for o in moved.objects for v in o.box)
            assert matches(moved.caption, render(moved, 32))
            # the centres' distances are the original ones, maybe swapped between the axes
            (ax, ay), (bx, by) = (o.center for o in scene.objects)
            (mx, my), (nx, ny) = (o.center for o in moved.objects)
            assert sorted([abs(ax - bx), abs(ay - by)]) == sorted([abs(mx - nx), abs(my - ny)])
            reached += 1
    assert reached > 80
    with pytest.raises(ValueError, match="unknown relation"):
        reflect(next(scene_at(0, i, 32) for i in range(20) if scene_at(0, i, 32).relation), 32, "beside")
