"""clip_rerank: loading (config name, config file, local weights, own checkpoints), Scorer, metrics."""

import json
import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import scipy.linalg
import torch

from clip_rerank.load import CONFIG_DIR, load, metadata, save
from clip_rerank.metrics import clip_score, fd_clip, frechet_distance
from imagetext.shapes import ShapesDataset

# A CLIP small enough to train in seconds on 2 CPU cores; most of its weights are the 49408-token embedding.
MICRO_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def seeded_load(*args, seed: int = 0, **kwargs):
    """open_clip initialises weights from torch's global generator: seed it here without leaking the state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return load(*args, **kwargs)


def random_images(n: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=generator) * 2 - 1


def shapes_batch(n: int, offset: int = 0) -> tuple[torch.Tensor, list[str]]:
    items = [ShapesDataset(n, image_size=32, seed=0, offset=offset)[i] for i in range(n)]
    return torch.stack([item["image"] for item in items]), [item["caption"] for item in items]


@pytest.fixture(scope="module")
def scorer():
    return seeded_load("clip-tiny-32")


@pytest.fixture(scope="module")
def micro_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "clip-test-micro.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return path


# --- loading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(path.stem for path in CONFIG_DIR.glob("*.json")))
def test_project_configs_load_by_name_with_their_sizes(name):
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    scorer = seeded_load(name)
    size = config["vision_cfg"]["image_size"]
    assert scorer.image_size == (size, size)
    assert scorer.embed_dim == config["embed_dim"]
    assert scorer.encode_text(["a small red circle"]).shape == (1, config["embed_dim"])
    assert isinstance(scorer.tokenizer, open_clip.SimpleTokenizer)  # bundled BPE, nothing downloaded
    assert scorer.tokenize(["a"]).shape == (1, config["text_cfg"]["context_length"])
    assert not any(p.requires_grad for p in scorer.model.parameters()) and not scorer.model.training


def test_a_model_config_file_loads_under_its_file_name(micro_config_file):
    scorer = seeded_load(str(micro_config_file))
    assert scorer.architecture == "clip-test-micro"
    assert scorer.embed_dim == MICRO_CONFIG["embed_dim"]


def test_own_safetensors_checkpoint_round_trips_without_the_config_registry(scorer, tmp_path):
    # A name open_clip has never heard of: the checkpoint's metadata alone must rebuild the model.
    path = save(
        scorer.model,
        "renamed-tiny",
        tmp_path / "clip.safetensors",
        model_config=open_clip.get_model_config("clip-tiny-32"),
    )
    assert "renamed-tiny" not in open_clip.list_models()
    restored = seeded_load(path, seed=1)  # a different seed: equal outputs can only come from the file
    images = random_images(4)
    assert restored.architecture == "renamed-tiny"
    assert torch.equal(restored.encode_images(images), scorer.encode_images(images))
    assert torch.equal(restored.encode_text(["a red circle"]), scorer.encode_text(["a red circle"]))


def test_local_open_clip_weights_file_loads_as_pretrained(scorer, tmp_path):
    path = tmp_path / "open_clip_weights.pt"
    torch.save(scorer.model.state_dict(), path)
    restored = seeded_load("clip-tiny-32", pretrained=path, seed=1)
    images = random_images(4)
    assert torch.equal(restored.encode_images(images), scorer.encode_images(images))


def test_lightning_checkpoint_loads_alone_and_as_pretrained(scorer, tmp_path):
    path = tmp_path / "last.ckpt"
    lightning_state = {f"model.{name}": tensor for name, tensor in scorer.model.state_dict().items()}
    torch.save({"state_dict": lightning_state, "clip_rerank": metadata(scorer.model, "clip-tiny-32")}, path)
    images = random_images(4)
    for restored in (seeded_load(path, seed=1), seeded_load("clip-tiny-32", pretrained=path, seed=1)):
        assert torch.equal(restored.encode_images(images), scorer.encode_images(images))


def test_a_checkpoint_of_another_architecture_is_refused(scorer, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(scorer.model.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit architecture clip-small-64") as raised:
        load("clip-small-64", pretrained=path)
    assert "\n" not in str(raised.value)
    lightning_path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{name}": t for name, t in scorer.model.state_dict().items()}}, lightning_path)
    with pytest.raises(ValueError, match="does not fit architecture clip-small-64"):
        load("clip-small-64", pretrained=lightning_path)


@pytest.mark.parametrize(
    "spec, pretrained, error, message",
    [
        ("no-such-clip", None, ValueError, "unknown CLIP architecture 'no-such-clip'; use one of clip-"),
        (
            "runs/missing/clip.safetensors",
            None,
            FileNotFoundError,
            "CLIP checkpoint runs/missing/clip.safetensors not found; give an existing",
        ),
        ("runs/missing/last.ckpt", None, FileNotFoundError, "CLIP checkpoint runs/missing/last.ckpt not found"),
        ("missing/config.json", None, FileNotFoundError, "no CLIP model config at"),
        ("clip-tiny-32", "missing/weights.pt", FileNotFoundError, "no CLIP weights file at missing/weights.pt"),
        ("clip-tiny-32", "no_such_tag", ValueError, "unknown pretrained tag 'no_such_tag' for clip-tiny-32"),
    ],
)
def test_bad_specs_give_one_line_errors_naming_the_fix(spec, pretrained, error, message):
    with pytest.raises(error, match=message.replace(".", r"\.")) as raised:
        load(spec, pretrained=pretrained)
    assert "\n" not in str(raised.value)


def test_a_safetensors_file_without_metadata_asks_for_the_architecture(scorer, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bare.safetensors"
    save_file({name: t.contiguous().clone() for name, t in scorer.model.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"load it as load\(ARCHITECTURE, pretrained="):
        load(path)
    restored = seeded_load("clip-tiny-32", pretrained=path, seed=1)  # and that is how it loads
    images = random_images(2)
    assert torch.equal(restored.encode_images(images), scorer.encode_images(images))


# --- Scorer ----------------------------------------------------------------------------------------


def test_encode_images_takes_any_size_and_returns_unit_vectors(scorer):
    for height, width in [(32, 32), (20, 20), (64, 48), (45, 70)]:
        features = scorer.encode_images(random_images(3, height, width))
        assert features.shape == (3, scorer.embed_dim)
        assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_wider_image_is_centre_cropped_like_open_clip(scorer):
    # resize_mode "shortest": the short side already fits, so the model sees exactly the centre square.
    wide = random_images(2, 32, 48)
    assert torch.allclose(scorer.encode_images(wide), scorer.encode_images(wide[..., 8:40]), atol=1e-6)


@pytest.mark.parametrize("size", [32, 48, 100])
def test_preprocess_matches_open_clips_own_pil_pipeline(scorer, size):
    from imagetext.images import array_to_tensor, tensor_to_array, tensor_to_pil

    image = array_to_tensor(tensor_to_array(random_images(1, size, size)[0]))  # on the uint8 grid PIL works on
    _, _, pil_preprocess = open_clip.create_model_and_transforms("clip-tiny-32")
    difference = (scorer.preprocess(image[None])[0] - pil_preprocess(tensor_to_pil(image))).abs()
    # Same size: identical. Resized: PIL rounds to uint8 after its bicubic filter, so values differ by about
    # a grey level (0.015 in normalised units); without antialiasing it is 0.4 to 0.7.
    assert difference.mean() < (1e-6 if size == 32 else 0.01)


def test_gradients_flow_through_encode_images_only_when_asked(scorer):
    images = random_images(2, 40, 40).requires_grad_(True)
    assert not scorer.encode_images(images).requires_grad
    text = scorer.encode_text(["a large blue square"])
    (scorer.encode_images(images, grad=True) @ text.T).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_score_is_the_cosine_of_the_embeddings(scorer):
    images = random_images(5)
    expected = scorer.encode_images(images) @ scorer.encode_text(["a small green triangle"])[0]
    assert torch.allclose(scorer.score("a small green triangle", images), expected)


def test_rerank_is_the_argsort_of_score_and_keep_cuts_it(scorer):
    images = random_images(8)
    scores = scorer.score("a large red circle", images)
    indices, kept_scores = scorer.rerank("a large red circle", images)
    assert torch.equal(indices, torch.argsort(scores, descending=True))
    assert torch.equal(kept_scores, scores[indices])
    assert torch.all(kept_scores[:-1] >= kept_scores[1:])
    top3, top3_scores = scorer.rerank("a large red circle", images, keep=3)
    assert top3.dtype == torch.long and torch.equal(top3, indices[:3]) and torch.equal(top3_scores, kept_scores[:3])
    # the best image stays best wherever it is placed
    permutation = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    assert permutation[scorer.rerank("a large red circle", images[permutation], keep=1)[0]] == indices[0]
    for keep in (0, 9):
        with pytest.raises(ValueError, match="keep must be between 1 and"):
            scorer.rerank("a large red circle", images, keep=keep)


def test_batch_size_and_bf16_do_not_change_the_embeddings_beyond_rounding(scorer):
    images = random_images(5)
    small_batches = type(scorer)(scorer.model, scorer.tokenizer, batch_size=2)
    assert torch.allclose(small_batches.encode_images(images), scorer.encode_images(images), atol=1e-5)
    in_bf16 = type(scorer)(scorer.model, scorer.tokenizer, bf16=True)
    cosine = (in_bf16.encode_images(images) * scorer.encode_images(images)).sum(dim=-1)
    assert torch.all(cosine > 0.99)


def test_bad_image_shapes_are_refused(scorer):
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        scorer.encode_images(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="no images to encode"):
        scorer.encode_images(torch.zeros(0, 3, 32, 32))


# --- metrics ---------------------------------------------------------------------------------------


def test_clip_score_is_mean_cosine_times_100(scorer):
    images = random_images(4)
    prompts = ["a small red circle", "a large blue square", "a small red circle", "a large green triangle"]
    result = clip_score(scorer, prompts, images)
    for i, prompt in enumerate(prompts):
        assert result.per_image[i].item() == pytest.approx(
            100 * scorer.score(prompt, images[i : i + 1]).item(), abs=1e-4
        )
    assert result.mean == pytest.approx(result.per_image.mean().item())
    assert clip_score(scorer, "a small red circle", images).per_image.shape == (4,)
    with pytest.raises(ValueError, match="got 2 prompts for 4 images"):
        clip_score(scorer, prompts[:2], images)


def test_frechet_distance_of_a_shift_is_its_squared_length():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(features, features) < 1e-9
    for length in (0.1, 0.5, 2.0):
        shift = torch.full((16,), length / 4)  # |shift| = length
        assert frechet_distance(features, features + shift) == pytest.approx(length**2, rel=1e-6)


def test_frechet_distance_agrees_with_scipy_sqrtm():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(300, 8, generator=generator, dtype=torch.float64)
    b = (
        torch.randn(300, 8, generator=generator, dtype=torch.float64)
        @ torch.randn(8, 8, generator=generator, dtype=torch.float64)
        + 0.3
    )
    mean_a, mean_b, cov_a, cov_b = a.mean(0).numpy(), b.mean(0).numpy(), np.cov(a.numpy().T), np.cov(b.numpy().T)
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_with_fewer_samples_than_dimensions_is_finite():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 32, generator=generator), torch.randn(6, 32, generator=generator)  # singular covariances
    assert frechet_distance(a, a) < 1e-6
    assert 0 < frechet_distance(a, b) < float("inf")
    with pytest.raises(ValueError, match="N >= 2 samples"):
        frechet_distance(a[:1], b)


def test_fd_clip_is_zero_for_identical_sets_and_grows_with_a_shift(scorer):
    images = random_images(24)
    distances = [fd_clip(scorer, images, (images + shift).clamp(-1, 1)) for shift in (0.0, 0.2, 0.4, 0.8)]
    assert distances[0] < 1e-6
    assert all(near < far for near, far in zip(distances, distances[1:])), distances


# --- a trained model ranks the true caption first ----------------------------------------------------


@pytest.mark.slow
def test_trained_tiny_clip_scores_the_matching_caption_higher(micro_config_file):
    """150 contrastive steps on 1024 shapes pairs (~10 s of CPU), then 100 held-out images.

    Each held-out image is scored against its own caption and against the next image's caption. An
    untrained or mis-wired model (text and image paths not aligned, preprocessing differing between
    training and scoring) wins about half of these pairs (43-53 measured untrained, four seeds);
    P(at least 80 of 100 by chance) < 1e-9. Trained runs with four seeds won 98-100, so 80 leaves room.
    """
    scorer = seeded_load(str(micro_config_file))
    model = scorer.model.train().requires_grad_(True)
    images, captions = shapes_batch(1024)
    inputs, tokens = scorer.preprocess(images), scorer.tokenize(captions)
    loss_function = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = torch.randperm(len(inputs), generator=generator)[:64]
        loss = loss_function(*model(inputs[batch], tokens[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)

    held_out_images, held_out_captions = shapes_batch(100, offset=100_000)
    similarity = scorer.encode_images(held_out_images) @ scorer.encode_text(held_out_captions).T
    matching, mismatched = similarity.diagonal(), similarity.roll(-1, dims=1).diagonal()
    assert (matching > mismatched).sum().item() >= 80


def test_an_open_clip_tag_offline_is_one_line_naming_the_cache(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # no network, empty cache
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqgan_clip",
            "optimize",
            "a red circle",
            "--clip",
            "RN50",
            "--clip-pretrained",
            "openai",
            "--iterations",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0
    assert (
        "could not download open_clip's RN50 weights 'openai'" in result.stderr and "--clip-pretrained" in result.stderr
    )
    assert not (tmp_path / "out").exists()
