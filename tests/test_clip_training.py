"""`clip-rerank fit` end to end on tiny shapes: metrics logged, checkpoint loads alone, exact resume,
config errors; and the pieces of the LightningModule: retrieval with repeated captions, attribute swaps,
hard negatives and their loss, the augmentation and the schedule."""

import csv
import json
import math
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from stage_configs import (
    DDP_ON_TWO_CPUS,
    items_read,
    killed_after,
    read_log,
    run_fit,
    tiny_trainer,
    write_stage_config,
)

import clip_rerank
from clip_rerank.cli import main
from clip_rerank.lightning import (
    CLIPModule,
    attribute_hits,
    clip_loss_with_negatives,
    random_crop,
    retrieval_accuracy,
)
from imagetext.describe import matches
from imagetext.shapes import OPPOSITE_RELATION, ShapesDataset, parse_caption
from imagetext.shapes_contrasts import (
    ATTRIBUTES,
    hard_negative_captions,
    one_attribute_swaps,
    order_swap_captions,
    same_picture,
    with_reflected_pairs,
)
from imagetext.training import WarmupCosine
from vqgan_clip.cli import main as main_cli

# The smallest CLIP that still uses open_clip's BPE vocabulary (most of its weights are the token embedding).
NANO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

TINY = {
    "seed_everything": 0,
    "trainer": tiny_trainer(),
    "model": {
        "architecture": None,
        "learning_rate": 2.0e-3,
        "warmup_steps": 2,
        "crop_min_side": 0.8,
        "hard_negatives": True,
    },
    "data": {"source": "shapes", "image_size": 16, "batch_size": 8, "n_train": 32, "n_val": 24, "num_workers": 0},
}


@pytest.fixture(scope="module")
def nano_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "clip-test-nano.json"
    path.write_text(json.dumps(NANO_CONFIG))
    return path


def write_config(folder: Path, architecture: Path, name: str = "tiny.yaml", **overrides) -> Path:
    return write_stage_config(TINY, folder, name, **{"model.architecture": str(architecture), **overrides})


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


# --- fit through the CLI -----------------------------------------------------------------------------


def test_fit_logs_retrieval_and_attribute_metrics_and_the_checkpoint_loads_alone(tmp_path, nano_config_file):
    main(["fit", "-c", str(write_config(tmp_path, nano_config_file))])
    run = tmp_path / "logs" / "version_0"
    rows = metrics(run)
    logged = {key for row in rows for key, value in row.items() if value}
    expected = {
        "train/loss",
        "train/logit_scale",
        "train/lr",
        "val/loss",
        "val/i2t_top1",
        "val/i2t_top5",
        "val/t2i_top1",
        "val/t2i_top5",
    } | {f"val/zeroshot_{name}" for name in ATTRIBUTES}
    assert expected <= logged
    learning_rates = [float(row["train/lr"]) for row in rows if row["train/lr"]]
    assert learning_rates[0] < learning_rates[1] and learning_rates[-1] < learning_rates[1]  # warmup, then decay
    for name in expected - {"train/loss", "train/logit_scale", "train/lr", "val/loss"}:
        assert 0 <= float(next(row[name] for row in rows if row[name])) <= 1, name

    checkpoint = run / "checkpoints" / "last.ckpt"
    scorer = clip_rerank.load(checkpoint)  # no architecture given: the checkpoint names its own
    assert scorer.architecture == "clip-test-nano" and scorer.image_size == (16, 16)
    module = CLIPModule.load_from_checkpoint(checkpoint, weights_only=True)
    model = module.model.eval()
    trained_scale = model.logit_scale.item()
    assert trained_scale != pytest.approx(math.log(1 / 0.07))  # the temperature was learned and saved
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    captions = ["a small red circle", "a large blue square above a small green triangle", "a large purple circle"]
    with torch.no_grad():
        expected_images = F.normalize(model.encode_image(scorer.preprocess(images)), dim=-1)
        expected_texts = F.normalize(model.encode_text(scorer.tokenize(captions)), dim=-1)
    assert torch.allclose(scorer.encode_images(images), expected_images, atol=1e-6)
    assert torch.allclose(scorer.encode_text(captions), expected_texts, atol=1e-6)


def test_a_run_stopped_after_an_epoch_resumes_exactly(tmp_path, nano_config_file):
    # The straight run keeps a checkpoint per epoch; resuming from its first one is what a run killed after
    # epoch 0 would do (same config, so the same cosine schedule). Crops and hard negatives depend on
    # (seed, global_step) only, so the resumed run draws what the straight run drew.
    every_epoch = [
        {
            "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "save_top_k": -1, "every_n_epochs": 1},
        }
    ]
    # with every drawn batch extra on: the crops, hard negatives and reflections must draw again what they drew
    options = {"model.reflected_pairs": True, "model.reflect_to": "any", "model.order_negatives": True}
    config = write_config(
        tmp_path, nano_config_file, **{"trainer.max_epochs": 2, "trainer.callbacks": every_epoch, **options}
    )
    main(["fit", "-c", str(config)])
    checkpoints = tmp_path / "logs" / "version_0" / "checkpoints"
    straight = torch.load(checkpoints / "last.ckpt", weights_only=True)
    main(["fit", "-c", str(config), "--ckpt_path", str(checkpoints / "epoch=0-step=4.ckpt")])
    resumed = torch.load(tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)

    assert resumed["global_step"] == straight["global_step"] == 8
    assert straight["clip_rerank"]["architecture"] == "clip-test-nano"
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def write_wide_noise_folder(root: Path, n: int = 40) -> Path:
    """Noise images wider than tall (a square crop has room to move), each with two caption lines."""
    root.mkdir()
    for i in range(n):
        noise = torch.randint(256, (16, 24, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        Image.fromarray(noise.numpy()).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"noise number {i}\nthe {i % 7}th kind of noise\n")
    return root


@pytest.mark.parametrize("source", ["shapes", "folder", "wds"])
def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path, nano_config_file, source):
    """Killed after step 3 of the first epoch, resumed from that step's last.ckpt: the weights of a
    straight run, tensor by tensor. The folder case draws random captions and crops in a worker; the
    wds case does too, in two workers that each read a stream of shards."""
    if source == "shapes":
        options = {"model.reflected_pairs": True, "model.reflect_to": "any", "model.order_negatives": True}
    else:
        folder = write_wide_noise_folder(tmp_path / "noise", n=48 if source == "wds" else 40)
        if source == "wds":
            main_cli(["data", "shard", str(folder), str(tmp_path / "shards"), "--shard-size", "8"])
            # 5 training shards of 8 (the last of 6 validates): 2 streams, batches of 8, 5 steps an epoch
            data = {"data.source": "wds", "data.path": str(tmp_path / "shards"), "data.num_workers": 2}
        else:
            data = {"data.source": "folder", "data.path": str(folder), "data.num_workers": 1}
        options = {**data, "data.random_crop": True, "model.hard_negatives": False}
    config = write_config(tmp_path, nano_config_file, **{"trainer.max_epochs": 2, **options})
    main(["fit", "-c", str(config)])
    straight = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert straight["global_step"] >= 8  # two epochs of at least 4 steps
    callbacks = [*tiny_trainer()["callbacks"], *killed_after(3)]
    killed = write_config(
        tmp_path,
        nano_config_file,
        "killed.yaml",
        **{"trainer.max_epochs": 2, "trainer.callbacks": callbacks, **options},
    )
    main(["fit", "-c", str(killed)])
    mid_epoch = tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(mid_epoch, weights_only=True)["global_step"] == 3
    main(["fit", "-c", str(config), "--ckpt_path", str(mid_epoch)])
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"]
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


@pytest.mark.slow
def test_ddp_on_shards_reads_each_sample_once_and_resumes_mid_epoch_exactly(tmp_path, nano_config_file):
    """2 CPU processes x 2 loader workers on 8 training shards of 4: each epoch the 4 streams read
    disjoint samples, all of them; killed after step 3 and resumed, every rank's streams go on where
    they stood (the checkpoint holds both ranks' positions) and the weights equal a straight run's."""
    folder = write_wide_noise_folder(tmp_path / "noise", n=36)
    main_cli(["data", "shard", str(folder), str(tmp_path / "shards"), "--shard-size", "4"])
    options = {
        **{"data.source": "wds", "data.path": str(tmp_path / "shards"), "data.num_workers": 2},
        **{"data.batch_size": 4, "data.random_crop": True, "model.hard_negatives": False, "trainer.max_epochs": 2},
        **DDP_ON_TWO_CPUS,
    }
    callbacks = tiny_trainer()["callbacks"]

    def config(name: str, *extra: dict) -> Path:
        return write_config(tmp_path, nano_config_file, name, **options, **{"trainer.callbacks": [*callbacks, *extra]})

    run_fit("clip_rerank", config("straight.yaml", read_log(tmp_path / "read")))
    read = items_read(tmp_path / "read")
    for epoch in (0, 1):
        assert len(read[(0, epoch)]) == len(read[(1, epoch)]) == 16
        assert len(set(read[(0, epoch)]) | set(read[(1, epoch)])) == 32
    straight = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    run_fit("clip_rerank", config("killed.yaml", *killed_after(3)))
    mid_epoch = tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(mid_epoch, weights_only=True)["global_step"] == 3
    run_fit("clip_rerank", config("resumed.yaml", read_log(tmp_path / "read-resumed")), "--ckpt_path", str(mid_epoch))
    read_resumed = items_read(tmp_path / "read-resumed")
    for rank in (0, 1):
        assert read_resumed[(rank, 0)] == read[(rank, 0)][3 * 4 :]
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 8
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


@pytest.mark.slow
def test_two_processes_train_as_one_on_the_global_batch(tmp_path, nano_config_file):
    """DDP on 2 CPU processes with batches of 4 gives the weights of 1 process with batches of 8: the
    contrastive loss sees the global batch (features gathered with gradients), and the ranks read
    disjoint halves of each epoch. Augmentation and negatives are off (they are drawn per process)."""
    plain = {"model.crop_min_side": 1.0, "model.hard_negatives": False, "trainer.max_epochs": 2}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    run_fit("clip_rerank", write_config(tmp_path / "one", nano_config_file, **plain, **{"data.batch_size": 8}))
    two = write_config(tmp_path / "two", nano_config_file, **plain, **{"data.batch_size": 4}, **DDP_ON_TWO_CPUS)
    run_fit("clip_rerank", two)
    single, ddp = (
        torch.load(tmp_path / name / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("one", "two")
    )
    assert single["global_step"] == ddp["global_step"] == 8
    assert abs(float(single["state_dict"]["model.logit_scale"]) - math.log(1 / 0.07)) > 1e-3  # it did train
    for key, value in single["state_dict"].items():
        other = ddp["state_dict"][key]
        if key.endswith("attn.in_proj_bias"):
            # The key bias (middle third) shifts every logit of a query alike, so softmax gives it no
            # gradient but rounding noise, which Adam scales up to full-size steps: compare q and v only.
            value, other = (rearrange(bias, "(qkv d) -> qkv d", qkv=3)[[0, 2]] for bias in (value, other))
        assert torch.allclose(other, value, atol=1e-6, rtol=1e-5), key


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model.architecture": "no-such-clip"}, "unknown CLIP architecture 'no-such-clip'"),
        ({"model.crop_min_side": 0.0}, "model.crop_min_side must be in (0, 1]"),
        ({"model.reflect_to": "sideways"}, "model.reflect_to must be one of ('opposite', 'any')"),
        ({"trainer.max_epochs": -1}, "the cosine schedule needs an end: set trainer.max_epochs or trainer.max_steps"),
    ],
)
def test_config_mistakes_are_one_line_errors(tmp_path, nano_config_file, override, message):
    with pytest.raises(SystemExit) as raised:
        main(["fit", "-c", str(write_config(tmp_path, nano_config_file, **override))])
    error = str(raised.value.code)
    assert error.startswith("clip-rerank: error:") and message in error and "\n" not in error


# --- the pieces ----------------------------------------------------------------------------------------


def unit(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_retrieval_counts_identical_captions_as_one():
    # Pairs 0 and 1 share a caption. Image 1 looks like caption B, image 0 like the shared caption A.
    captions = torch.tensor([7, 7, 9])
    texts = unit([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    images = unit([[1, 0.1, 0], [0.2, 1, 0], [0, 1, 0.1]])
    metrics = retrieval_accuracy(images, texts, captions)
    # image→text over the 2 distinct captions: images 0 and 2 right, image 1 picks B.
    assert metrics["i2t_top1"] == pytest.approx(2 / 3)
    # text→image: caption A (asked by pairs 0 and 1) ranks image 0 first, which carries A: two hits.
    # Caption B ranks image 2 first, which carries B: a hit.
    assert metrics["t2i_top1"] == pytest.approx(1.0)
    assert metrics["i2t_top5"] == metrics["t2i_top5"] == 1.0

    # Without the shared caption, image 1 would have had to beat image 0 for caption A: it cannot.
    distinct = retrieval_accuracy(images, texts, torch.tensor([7, 8, 9]))
    assert distinct["t2i_top1"] == pytest.approx(2 / 3)


def direct_retrieval_count(images, texts, ids, k):
    """The same figures counted pair by pair, the slow and obvious way."""
    n, i2t, t2i = len(ids), 0, 0
    first_pair = {caption: ids.tolist().index(caption) for caption in set(ids.tolist())}
    for i in range(n):
        own = float(images[i] @ texts[i])
        i2t += sum(float(images[i] @ texts[j]) > own for j in first_pair.values()) < k
        scores = images @ texts[i]
        best_carrier = max(float(scores[j]) for j in range(n) if ids[j] == ids[i])
        t2i += sum(float(scores[j]) > best_carrier for j in range(n) if ids[j] != ids[i]) < k
    return i2t / n, t2i / n


def test_retrieval_agrees_with_a_direct_count():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = torch.randint(0, 15, (40,), generator=generator)  # many repeated captions
        texts = F.normalize(torch.randn(15, 8, generator=generator), dim=-1)[ids]
        images = F.normalize(texts + 0.8 * torch.randn(40, 8, generator=generator), dim=-1)
        metrics = retrieval_accuracy(images, texts, ids)
        for k in (1, 5):
            expected = direct_retrieval_count(images, texts, ids, k)
            assert (metrics[f"i2t_top{k}"], metrics[f"t2i_top{k}"]) == pytest.approx(expected, abs=1e-6)


def test_retrieval_of_random_features_is_near_chance_and_of_equal_features_perfect():
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(200, 64, generator=generator), dim=-1)
    other = F.normalize(torch.randn(200, 64, generator=generator), dim=-1)
    ids = torch.arange(200)
    assert retrieval_accuracy(features, features, ids) == {
        "i2t_top1": 1.0,
        "t2i_top1": 1.0,
        "i2t_top5": 1.0,
        "t2i_top5": 1.0,
    }
    chance = retrieval_accuracy(features, other, ids)
    assert chance["t2i_top1"] < 0.05 and chance["i2t_top5"] < 0.1


def differing_words(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a.split(), b.split()))


def test_one_attribute_swaps_change_exactly_that_attribute():
    scene = parse_caption("a small red circle above a large blue square")
    first_object = one_attribute_swaps(scene)
    assert {name: len(scenes) for name, scenes in first_object.items()} == {
        "color": 5,
        "shape": 2,
        "size": 1,
        "relation": 3,
    }
    every_object = one_attribute_swaps(scene, every_object=True)
    assert {name: len(scenes) for name, scenes in every_object.items()} == {
        "color": 10,
        "shape": 4,
        "size": 2,
        "relation": 3,
    }
    for name, scenes in every_object.items():
        for swapped in scenes:
            assert not same_picture(scene, swapped)
            if name != "relation":
                assert differing_words(scene.caption, swapped.caption) == 1 and swapped.relation == scene.relation
    assert set(one_attribute_swaps(parse_caption("a large green triangle"))) == {"color", "shape", "size"}


def test_a_swap_that_shows_the_same_picture_is_left_out():
    twins = parse_caption("a small red circle above a small red circle")
    relations = [s.caption for s in one_attribute_swaps(twins)["relation"]]
    assert relations == [
        "a small red circle to the left of a small red circle",
        "a small red circle to the right of a small red circle",
    ]  # not "below": the same picture
    assert same_picture(
        parse_caption("a small red circle above a large blue square"),
        parse_caption("a large blue square below a small red circle"),
    )


def test_hard_negatives_are_false_by_one_attribute_and_seeded():
    scenes = [
        parse_caption(c)
        for c in (
            "a large green triangle",
            "a small red circle above a large blue square",
            "a small red circle to the left of a small red circle",
        )
    ] * 20
    labels = [scene.to_dict() for scene in scenes]
    negatives = hard_negative_captions(labels, torch.Generator().manual_seed(0))
    assert negatives == hard_negative_captions(labels, torch.Generator().manual_seed(0))
    assert negatives != hard_negative_captions(labels, torch.Generator().manual_seed(1))
    for scene, negative in zip(scenes, negatives):
        assert not same_picture(scene, parse_caption(negative))
        assert differing_words(scene.caption, negative) == 1 or parse_caption(negative).relation != scene.relation
    relation_swaps = sum(parse_caption(n).relation != s.relation for s, n in zip(scenes, negatives))
    assert 4 <= relation_swaps <= 18  # the relation is one attribute in four: 10 of the 40 two-object scenes expected


def test_loss_with_no_negatives_is_open_clips_and_negatives_make_it_harder():
    generator = torch.Generator().manual_seed(0)
    images, texts = (F.normalize(torch.randn(6, 8, generator=generator), dim=-1) for _ in range(2))
    scale = torch.tensor(10.0)
    plain = open_clip.ClipLoss()(images, texts, scale)
    assert torch.allclose(clip_loss_with_negatives(images, texts, texts[:0], scale), plain)
    assert clip_loss_with_negatives(images, texts, texts.roll(1, 0), scale) > plain


def test_attribute_hits_follow_the_scores():
    scenes = [parse_caption("a large green triangle"), parse_caption("a small red circle above a large blue square")]
    true_captions = {scene.caption for scene in scenes}

    def encode_text(captions):  # true captions point one way, every swapped caption the other
        return unit([[1, 0] if caption in true_captions else [0, 1] for caption in captions])

    images = unit([[1, 0], [0, 1]])  # image 0 looks like its true caption, image 1 like the swaps
    hits = attribute_hits(images, [scene.to_dict() for scene in scenes], encode_text)
    assert hits.shape == (2, len(ATTRIBUTES))
    assert torch.equal(hits[0, :3], torch.ones(3)) and hits[0, 3].isnan()  # one object: no relation to judge
    assert torch.equal(hits[1], torch.zeros(4))


def test_random_crop_is_seeded_keeps_black_background_and_only_flips_when_asked():
    images = torch.full((4, 3, 16, 16), -1.0)
    images[:, :, 6:10, 2:6] = 1.0  # a white square left of centre on black

    def crop(seed, **kwargs):
        return random_crop(images, torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(crop(0, min_side=0.8), crop(0, min_side=0.8))
    assert not torch.equal(crop(0, min_side=0.8), crop(1, min_side=0.8))
    assert torch.allclose(crop(0, min_side=1.0), images, atol=1e-5)  # a full-size crop is the image itself
    cropped = crop(0, min_side=0.8)
    assert cropped.min() >= -1 - 1e-5 and cropped.max() <= 1 + 1e-5
    assert (cropped[..., :, 12:] == -1).all()  # the right of the image stays empty: nothing was mirrored
    flipped = crop(0, min_side=1.0, flip=True)
    mirrored = [torch.allclose(f, image.flip(-1), atol=1e-5) for f, image in zip(flipped, images)]
    kept = [torch.allclose(f, image, atol=1e-5) for f, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored)


def test_warmup_then_cosine_to_zero():
    factors = [WarmupCosine(warmup_steps=4, min_ratio=0.0, total_steps=12)(step) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[8] == pytest.approx(0.5) and factors[12] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_order_swaps_name_the_objects_the_other_way_round():
    labels = [
        parse_caption(c).to_dict()
        for c in (
            "a large green triangle",
            "a small red circle above a large blue square",
            "a small red circle to the left of a small red circle",
        )
    ]
    assert order_swap_captions(labels) == ["a large blue square above a small red circle"]


def test_reflected_pairs_join_the_batch_as_true_pairs():
    items = [ShapesDataset(12, image_size=32, seed=3)[i] for i in range(12)]
    images, captions, labels = (
        torch.stack([i["image"] for i in items]),
        [i["caption"] for i in items],
        [i["labels"] for i in items],
    )
    two_objects = sum(1 for item in labels if item["relation"])
    new_images, new_captions, new_labels = with_reflected_pairs(images, captions, labels)
    assert len(new_images) == len(new_captions) == len(new_labels) == 12 + two_objects and two_objects > 0
    assert torch.equal(new_images[:12], images) and new_captions[:12] == captions
    for image, caption, original in zip(
        new_images[12:], new_captions[12:], [c for c, label in zip(captions, labels) if label["relation"]]
    ):
        assert matches(caption, image) and caption != original


def test_reflected_pairs_to_any_relation_draw_all_three_others_reproducibly():
    items = [ShapesDataset(40, image_size=32, seed=3)[i] for i in range(40)]
    images, captions, labels = (
        torch.stack([i["image"] for i in items]),
        [i["caption"] for i in items],
        [i["labels"] for i in items],
    )
    first = with_reflected_pairs(images, captions, labels, torch.Generator().manual_seed(1))
    again = with_reflected_pairs(images, captions, labels, torch.Generator().manual_seed(1))
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    originals = [label for label in labels if label["relation"]]
    kinds = set()
    for image, caption, new, old in zip(first[0][40:], first[1][40:], first[2][40:], originals):
        assert matches(caption, image) and new["relation"] != old["relation"]
        kinds.add("opposite" if new["relation"] == OPPOSITE_RELATION[old["relation"]] else "other axis")
    assert kinds == {"opposite", "other axis"}


def test_model_compile_compiles_both_towers_in_place(nano_config_file):
    module = CLIPModule(architecture=str(nano_config_file), compile=True)
    keys = list(module.state_dict())
    module.configure_model()
    assert module.model.visual._compiled_call_impl is not None
    assert module.model.transformer._compiled_call_impl is not None
    assert list(module.state_dict()) == keys
