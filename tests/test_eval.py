"""`vqgan-clip eval`: the ruler on ground-truth renders, eval.json + a self-contained report, folder data, bad input."""

import json
import re

import pytest
import torch
from einops import repeat
from test_generate import IMAGE_SIZE, make_tiny_models  # the same tiny checkpoints generate is tested with

import clip_rerank
import vqgan
from imagetext.files import file_sha256
from imagetext.shapes import write_shapes_folder
from vqgan_clip.cli import main
from vqgan_clip.evaluate import evaluate_set, shapes_caption_sets

FIGURES = {
    "attribute_accuracy": {
        "real",
        "vqgan_reconstruction",
        "single_sample",
        "reranked_top1",
        "rerank_lift",
        "oracle_any_of_n",
        "clip_pick_rate",
    },
    "candidate_errors": {"candidates", "correct", "count", "size", "color", "shape", "relation"},
    "diversity": {"distinct_images", "distinct_scenes"},
    "clip_score": {"real", "single_sample", "reranked_top1"},
    "fd_clip": {"single_sample", "reranked_top1"},
    "vqgan": {"psnr_db", "codebook_usage"},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def scorer_and_vqgan(models):
    return clip_rerank.load(models["clip"]), vqgan.load(models["vqgan"])


def source_of(images: torch.Tensor):
    """A candidate source that answers every caption with `images` (one per caption), n times over."""

    def source(captions: list[str], n: int) -> torch.Tensor:
        assert len(captions) == len(images)
        return repeat(images, "p c h w -> (p n) c h w", n=n)

    return source


def test_ground_truth_renders_read_as_correct_and_other_captions_images_do_not(scorer_and_vqgan):
    scorer, decoder = scorer_and_vqgan
    for caption_set in shapes_caption_sets(100, IMAGE_SIZE):
        truth = evaluate_set(caption_set, source_of(caption_set.images), scorer, decoder, n_candidates=2)
        accuracy = truth.figures["attribute_accuracy"]
        assert min(accuracy["real"], accuracy["single_sample"], accuracy["reranked_top1"]) >= 0.99, caption_set.name
        assert accuracy["rerank_lift"] == 0.0  # equal candidates: the top-1 is candidate 0
        assert truth.figures["clip_score"]["single_sample"] == pytest.approx(
            truth.figures["clip_score"]["real"], abs=1e-3
        )
        assert truth.figures["fd_clip"]["single_sample"] == pytest.approx(0.0, abs=1e-6)
        assert truth.figures["vqgan"]["psnr_db"] > 0 and 0 < truth.figures["vqgan"]["codebook_usage"] <= 1

        # Each caption answered with the next caption's image: the ruler must say so.
        shifted = evaluate_set(
            caption_set, source_of(caption_set.images.roll(1, dims=0)), scorer, decoder, n_candidates=1
        )
        assert shifted.figures["attribute_accuracy"]["single_sample"] < 0.3
        assert shifted.figures["fd_clip"]["single_sample"] < 0.05  # the same images as a set: close to the real ones


def test_reranking_takes_the_clip_best_candidate(scorer_and_vqgan):
    scorer, decoder = scorer_and_vqgan
    caption_set = shapes_caption_sets(12, IMAGE_SIZE)[0]

    def wrong_then_right(captions, n):  # candidate 0: an empty black image; candidate 1: the caption's own render
        return torch.stack([torch.full_like(caption_set.images, -1.0), caption_set.images], dim=1).flatten(0, 1)

    result = evaluate_set(caption_set, wrong_then_right, scorer, decoder, n_candidates=2)
    best = result.scores.argmax(dim=1)
    expected_top1 = (best == 1).float().mean().item()  # only the caption's own image is right
    accuracy = result.figures["attribute_accuracy"]
    assert accuracy["single_sample"] == 0.0
    assert accuracy["reranked_top1"] == pytest.approx(expected_top1)
    assert accuracy["rerank_lift"] == pytest.approx(expected_top1)
    assert accuracy["oracle_any_of_n"] == 1.0  # candidate 1 is always right
    assert accuracy["clip_pick_rate"] == pytest.approx(expected_top1)
    by_kind = [result.figures[kind] for kind in ("one_object", "two_objects") if kind in result.figures]
    assert sum(kind["n_captions"] for kind in by_kind) == 12
    assert sum(kind["reranked_top1"] * kind["n_captions"] for kind in by_kind) == pytest.approx(12 * expected_top1)
    assert all(kind["oracle_any_of_n"] == 1.0 and kind["single_sample"] == 0.0 for kind in by_kind)
    # every black candidate shows no object (a count error); every render is right
    assert result.figures["candidate_errors"] == {
        "candidates": 24,
        "correct": 12,
        "count": 12,
        "size": 0,
        "color": 0,
        "shape": 0,
        "relation": 0,
    }
    assert result.figures["diversity"] == {"distinct_images": 2.0, "distinct_scenes": 2.0}
    assert result.figures["clip_score"]["reranked_top1"] == pytest.approx(result.scores.max(dim=1).values.mean().item())


def test_eval_writes_json_and_a_self_contained_report_deterministically(models, tmp_path, capsys):
    args = [
        "eval",
        "--gpt",
        str(models["gpt"]),
        "--clip",
        str(models["clip"]),
        "--n",
        "3",
        "--rerank",
        "2",
        "--batch-size",
        "4",
    ]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    for name in ("eval.json", "report.html"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    results = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert results["sample_source"] == "gpt_prior" and results["data"] == "shapes"
    assert (results["n"], results["rerank"], results["seed"], results["image_size"]) == (3, 2, 0, IMAGE_SIZE)
    assert results["sampling"]["batch_size"] == 4
    assert results["checkpoints"]["gpt"]["sha256"] == file_sha256(models["gpt"])
    assert set(results["sets"]) == {"held_out", "novel"}
    for figures in results["sets"].values():
        assert figures["n_captions"] == 3 and figures["n_candidates"] == 2
        assert {group: set(figures[group]) for group in FIGURES} == FIGURES
        assert figures["attribute_accuracy"]["real"] == 1.0

    report = (tmp_path / "a" / "report.html").read_text()
    assert report.count('src="data:image/png;base64,') == 2 * 3 * (2 + 2)  # per caption: real, sample, top 2
    assert not re.search(r'(src|href)="(?!data:)', report)  # nothing outside the file
    assert "attribute accuracy: rerank lift" in report and "held_out" in report and "novel" in report
    assert "held_out:" in capsys.readouterr().out


def test_a_caption_folder_is_evaluated_on_its_validation_split(models, tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", n=40, image_size=IMAGE_SIZE)
    main(
        [
            "eval",
            "--gpt",
            str(models["gpt"]),
            "--clip",
            str(models["clip"]),
            "--data",
            str(folder),
            "--n",
            "10",
            "--rerank",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    results = json.loads((tmp_path / "out" / "eval.json").read_text())
    held_out = results["sets"]["held_out"]
    assert list(results["sets"]) == ["held_out"] and held_out["n_captions"] == 2  # 5% of 40
    assert held_out["attribute_accuracy"]["rerank_lift"] == 0.0  # one candidate: nothing to rerank


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--n", "1"], "--n: must be >= 2 (FD-CLIP needs two images per set)"),
        (["--rerank", "0"], "--rerank: must be >= 1"),
        (["--data", "missing-folder"], "--data missing-folder"),
        (["--clip", "no-such-clip"], "unknown CLIP architecture"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(models, tmp_path, monkeypatch, extra, expected):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--gpt", str(models["gpt"]), "--clip", str(models["clip"]), "--out", "out", *extra])
    message = str(exit_info.value.code)
    assert message.startswith("vqgan-clip eval: error:") and expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()
