"""`gpt-prior fit` on a tiny code-shard folder: data, logs, the checkpoint bundle, sampling, exact resume, errors."""

import csv
import hashlib
import warnings
from pathlib import Path

import pytest
import torch
from stage_configs import items_read, killed_after, read_log, run_fit, tiny_trainer, write_stage_config

import gpt_prior
from gpt_prior.checkpoint import resolve_vqgan
from gpt_prior.cli import main
from gpt_prior.data import CodeShardDataModule
from gpt_prior.lightning import GPTPriorModule, drop_captions
from gpt_prior.model import GPT
from imagetext.code_shards import read_code_shard, shard_path, write_code_shard, write_manifest
from imagetext.progress import PROGRESS_ENV, read_progress
from imagetext.seeding import keyed_generator
from imagetext.shapes import scene_at
from imagetext.training import WarmupCosine

GRID = (4, 4)
CODEBOOK = 16
N_TRAIN, N_VAL, SHARD_SIZE = 32, 8, 12  # train: shards of 12, 12, 8 items
LEARNING_RATE = 3e-3


def item_captions(index: int) -> list[str]:
    """Two caption lines per item, as a caption folder with several lines per image gives."""
    caption = scene_at(0, index, 32).caption
    return [caption, f"{caption} on black"]


def make_code_folder(folder: Path) -> Path:
    """A finished `vqgan-clip encode` output: random codes, shapes captions, a dummy VQGAN file."""
    folder.mkdir(parents=True)
    vqgan = folder / "vqgan.ckpt"
    vqgan.write_bytes(b"stand-in for VQGAN weights")
    generator = torch.Generator().manual_seed(0)
    splits, first_index = {}, 0
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        shards = []
        for start in range(0, n, SHARD_SIZE):
            count = min(SHARD_SIZE, n - start)
            codes = torch.randint(0, CODEBOOK, (count, *GRID), generator=generator)
            captions = [item_captions(first_index + start + i) for i in range(count)]
            path = write_code_shard(shard_path(folder, split, len(shards)), codes, captions)
            shards.append({"file": path.relative_to(folder).as_posix(), "n": count})
        splits[split] = {"n": n, "shards": shards}
        first_index += n
    write_manifest(
        folder,
        {
            "vqgan": str(vqgan),
            "vqgan_sha256": hashlib.sha256(vqgan.read_bytes()).hexdigest(),
            "codebook_size": CODEBOOK,
            "grid": list(GRID),
            "image_size": 16,
            "data": "test",
            "splits": splits,
        },
    )
    return folder


def write_config(
    tmp_path: Path,
    codes: Path,
    name: str = "tiny.yaml",
    callbacks: tuple[dict, ...] = (),
    num_workers: int = 0,
    **model,
) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": tiny_trainer(*callbacks, limit_val_batches=1, gradient_clip_val=1.0),
        "model": {
            "gpt": {"text_len": 24, "n_layer": 2, "n_head": 2, "n_embd": 32},
            "vocab_size": 256,
            "learning_rate": LEARNING_RATE,
            "warmup_steps": 2,
            "min_lr_ratio": 0.1,
            **model,
        },
        "data": {"codes": str(codes), "batch_size": 8, "num_workers": num_workers},
    }
    return write_stage_config(config, tmp_path, name)


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """One `gpt-prior fit` of 4 steps, shared by the tests that read its outputs."""
    tmp_path = tmp_path_factory.mktemp("fit")
    codes = make_code_folder(tmp_path / "codes")
    progress = tmp_path / "progress.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROGRESS_ENV, str(progress))
        # The config names a folder that does not exist; the command line's --data.codes must set the model's too.
        main(["fit", "-c", str(write_config(tmp_path, tmp_path / "no-codes")), "--data.codes", str(codes)])
    run = tmp_path / "logs" / "version_0"
    return {"codes": codes, "run": run, "checkpoint": run / "checkpoints" / "last.ckpt", "progress": progress}


# ---------------------------------------------------------------- data


def test_code_shard_batches_and_caption_draws(tmp_path):
    codes_folder = make_code_folder(tmp_path / "codes")
    data = CodeShardDataModule(str(codes_folder), batch_size=N_TRAIN, seed=3)
    data.setup("fit")
    shard_codes, shard_captions = read_code_shard(codes_folder / "train" / "codes-000001.safetensors")
    assert torch.equal(data.train_set.codes[SHARD_SIZE : 2 * SHARD_SIZE].long(), shard_codes)  # shards in order

    val = next(iter(data.val_dataloader()))
    assert val["codes"].dtype == torch.long and val["codes"].shape == (N_VAL, *GRID)
    assert val["caption"] == [item_captions(N_TRAIN + i)[0] for i in range(N_VAL)]  # val: the first line

    def epoch_batch(epoch: int) -> dict:
        data.train_set.set_epoch(epoch)
        loader = data.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    first, again, second = epoch_batch(0), epoch_batch(0), epoch_batch(1)
    assert (
        torch.equal(first["codes"], again["codes"]) and first["caption"] == again["caption"]
    )  # a function of (seed, epoch)
    order = [data.train_set.codes.long().flatten(1).eq(row.flatten()).all(1).nonzero().item() for row in first["codes"]]
    assert sorted(order) == list(range(N_TRAIN)) and order != list(range(N_TRAIN))  # one shuffled pass
    for index, caption in zip(order, first["caption"]):
        assert caption in item_captions(index)
    assert len(set(first["caption"]) - {item_captions(i)[0] for i in range(N_TRAIN)}) > 0  # second lines are drawn too
    assert first["caption"] != second["caption"]  # new order and new draws next epoch


def test_condition_dropout_replaces_captions():
    captions = [f"caption {i}" for i in range(200)]
    assert drop_captions(captions, 1.0, keyed_generator(0, 0)) == [""] * 200
    assert drop_captions(captions, 0.0, keyed_generator(0, 0)) == captions
    dropped = drop_captions(captions, 0.1, keyed_generator(0, 5))
    assert dropped == drop_captions(captions, 0.1, keyed_generator(0, 5))  # the keys fix the draw
    assert dropped != drop_captions(captions, 0.1, keyed_generator(0, 6))
    n_dropped = dropped.count("")
    assert 5 <= n_dropped <= 40 and all(d in ("", c) for d, c in zip(dropped, captions))


def test_warmup_then_cosine_to_the_floor():
    schedule = WarmupCosine(warmup_steps=4, min_ratio=0.1)
    assert [schedule(step) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]  # the ramp needs no end
    schedule.total_steps = 20
    factors = [schedule(step) for step in range(25)]
    assert all(a > b for a, b in zip(factors[4:20], factors[5:21]))
    assert factors[12] == pytest.approx(0.55) and factors[20:] == pytest.approx([0.1] * 5)
    assert WarmupCosine(warmup_steps=0, min_ratio=0.1)(0) == 1.0


# ---------------------------------------------------------------- fit, checkpoint, sampling


def test_fit_logs_both_losses_and_follows_the_schedule(fitted):
    rows = metrics(fitted["run"])
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss", "train/loss_text", "train/loss_img", "val/loss", "val/loss_text", "val/loss_img"} <= logged
    losses = [row for row in rows if row.get("train/loss")]
    for row in losses:
        expected = (float(row["train/loss_text"]) + 7 * float(row["train/loss_img"])) / 8
        assert float(row["train/loss"]) == pytest.approx(expected, rel=1e-4)
    # 4 steps: warmup 2 (½, 1), then the cosine from 1 down towards 0.1 at the last step
    lrs = [float(row["train/lr"]) for row in losses]
    assert lrs == pytest.approx([LEARNING_RATE * f for f in (0.5, 1.0, 1.0, 0.55)])


def test_fit_reports_its_steps_and_bar_metrics_to_the_progress_file(fitted):
    status = read_progress(fitted["progress"])
    assert status["task"] == "fit" and status["step"] == status["total"] == 4
    assert status["eta"] == 0 and status["elapsed"] > 0
    assert set(status["metrics"]) == {"loss"} and status["metrics"]["loss"] > 0


def test_checkpoint_alone_loads_and_samples(fitted):
    bundle = gpt_prior.load(fitted["checkpoint"])
    assert not bundle.model.training
    assert bundle.config.image_grid == GRID and bundle.config.image_vocab_size == CODEBOOK
    assert bundle.config.text_vocab_size == bundle.tokenizer.vocab_size
    assert bundle.vqgan_path == str(fitted["codes"] / "vqgan.ckpt")
    # the run folder's tokenizer.json is the checkpoint's
    assert (fitted["run"] / "tokenizer.json").read_text() == bundle.tokenizer.to_json()
    state = torch.load(fitted["checkpoint"], weights_only=True)["state_dict"]
    assert torch.equal(bundle.model.image_head.weight, state["model.image_head.weight"])

    prompts = bundle.text_tokens(["a small red circle", "a large blue square above a small green triangle"])
    codes = gpt_prior.sample(
        bundle.model,
        prompts,
        3,
        top_k=8,
        cfg_scale=2.0,
        empty_text_tokens=bundle.text_tokens([""]),
        generator=torch.Generator().manual_seed(0),
    )
    assert codes.shape == (6, *GRID) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < CODEBOOK


def test_missing_vqgan_is_a_clear_error_naming_the_path(fitted, tmp_path):
    bundle = gpt_prior.load(fitted["checkpoint"])
    vqgan = Path(bundle.vqgan_path)
    assert resolve_vqgan(bundle) == vqgan

    other = tmp_path / "other.ckpt"
    other.write_bytes(b"another VQGAN")
    with pytest.warns(UserWarning, match="sha256"):
        assert resolve_vqgan(bundle, override=other) == other

    moved = tmp_path / "moved.ckpt"
    vqgan.rename(moved)
    try:
        with pytest.raises(FileNotFoundError) as error:
            resolve_vqgan(bundle)
        message = str(error.value)
        assert str(vqgan) in message and "--vqgan" in message and "\n" not in message
    finally:
        moved.rename(vqgan)


def test_resume_continues_exactly(tmp_path):
    # With a loader worker: Lightning builds a resumed run's first loader early, and a worker draws its
    # first indices when it starts, so a shuffle or caption draw that missed the resumed epoch would show.
    codes = make_code_folder(tmp_path / "codes")
    main(["fit", "-c", str(write_config(tmp_path, codes, num_workers=1)), "--trainer.max_epochs", "2"])
    straight_run = tmp_path / "logs" / "version_0"
    straight = torch.load(straight_run / "checkpoints" / "last.ckpt", weights_only=True)

    # The same 2-epoch run, interrupted after its first epoch (early stopping fires at once) and resumed.
    # Each half trains its own tokenizer from the captions: it must come out the straight run's.
    stop_now = {
        "class_path": "pytorch_lightning.callbacks.EarlyStopping",
        "init_args": {"monitor": "val/loss", "stopping_threshold": 1.0e9},
    }
    interrupted = write_config(tmp_path, codes, "interrupted.yaml", callbacks=(stop_now,), num_workers=1)
    main(["fit", "-c", str(interrupted), "--trainer.max_epochs", "2"])
    first_half = torch.load(tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert first_half["global_step"] == 4

    resumed_config = write_config(tmp_path, codes, "resumed.yaml", num_workers=1)
    main(
        [
            "fit",
            "-c",
            str(resumed_config),
            "--trainer.max_epochs",
            "2",
            "--ckpt_path",
            str(tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"),
        ]
    )
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)

    assert resumed["global_step"] == straight["global_step"] == 8
    assert resumed["gpt_prior"] == straight["gpt_prior"]
    assert resumed["lr_schedulers"][0]["last_epoch"] == straight["lr_schedulers"][0]["last_epoch"]
    for key, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, atol=1e-6), key


def test_resume_mid_epoch_continues_exactly(tmp_path):
    """A checkpoint after step 3 of a 4-step epoch (what every_n_train_steps leaves when a run is
    killed), resumed: the same weights, tensor by tensor, as 8 steps straight."""
    codes = make_code_folder(tmp_path / "codes")
    main(["fit", "-c", str(write_config(tmp_path, codes, num_workers=1)), "--trainer.max_epochs", "2"])
    straight = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    interrupted = write_config(tmp_path, codes, "interrupted.yaml", callbacks=killed_after(3), num_workers=1)
    main(["fit", "-c", str(interrupted), "--trainer.max_epochs", "2"])
    mid_epoch = tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(mid_epoch, weights_only=True)["global_step"] == 3
    resumed_config = write_config(tmp_path, codes, "resumed.yaml", num_workers=1)
    main(["fit", "-c", str(resumed_config), "--trainer.max_epochs", "2", "--ckpt_path", str(mid_epoch)])
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 8
    for key, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, atol=1e-6), key


@pytest.mark.slow
def test_ddp_reads_each_item_once_an_epoch_and_resumes_mid_epoch_exactly(tmp_path):
    """2 CPU processes (gloo): each epoch the ranks train on disjoint halves of the code grids; killed
    after step 3 of the first epoch and resumed, each rank reads on from its 13th item and the run ends
    with the weights of the straight one, tensor by tensor."""
    codes = make_code_folder(tmp_path / "codes")
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "2", "--data.batch_size", "4"]
    run_fit("gpt_prior", write_config(tmp_path, codes, callbacks=(read_log(tmp_path / "read"),), num_workers=1), *ddp)
    read = items_read(tmp_path / "read")
    for epoch in (0, 1):
        ranks = [read[(rank, epoch)] for rank in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == N_TRAIN // 2
        assert len(set(ranks[0]) | set(ranks[1])) == N_TRAIN  # random 4x4 grids: each item is its own grid
    straight = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert straight["global_step"] == 8

    run_fit("gpt_prior", write_config(tmp_path, codes, "killed.yaml", callbacks=killed_after(3), num_workers=1), *ddp)
    mid_epoch = tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(mid_epoch, weights_only=True)["global_step"] == 3
    resumed_log = read_log(tmp_path / "read-resumed")
    resumed_config = write_config(tmp_path, codes, "resumed.yaml", callbacks=(resumed_log,), num_workers=1)
    run_fit("gpt_prior", resumed_config, *ddp, "--ckpt_path", str(mid_epoch))
    read_resumed = items_read(tmp_path / "read-resumed")
    for rank in (0, 1):
        assert read_resumed[(rank, 0)] == read[(rank, 0)][3 * 4 :]
        assert read_resumed[(rank, 1)] == read[(rank, 1)]
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 8
    for key, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key], value, atol=1e-6), key


@pytest.mark.slow
def test_fsdp2_on_two_processes_trains_as_ddp_and_saves_one_loadable_file(tmp_path):
    """configs/gpt_prior/fsdp.yaml's strategy (Lightning's ModelParallelStrategy: FSDP2, each block
    sharded) on 2 CPU processes: the weights of the same run under DDP, in one full checkpoint file."""
    codes = make_code_folder(tmp_path / "codes")
    common = ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--data.batch_size", "4"]
    ddp_dir, fsdp_dir = tmp_path / "ddp", tmp_path / "fsdp"
    ddp_dir.mkdir(), fsdp_dir.mkdir()
    run_fit("gpt_prior", write_config(ddp_dir, codes), *common, "--trainer.strategy", "ddp")
    run_fit("gpt_prior", write_config(fsdp_dir, codes), "-c", "fsdp", *common)
    ddp, fsdp = (
        torch.load(folder / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for folder in (ddp_dir, fsdp_dir)
    )
    assert fsdp["global_step"] == ddp["global_step"] == 4
    for key, value in ddp["state_dict"].items():
        assert torch.allclose(fsdp["state_dict"][key], value, atol=1e-5), key
    assert isinstance(gpt_prior.load(fsdp_dir / "logs" / "version_0" / "checkpoints" / "last.ckpt").model, GPT)


@pytest.mark.slow
def test_a_compiled_prior_trains_to_the_eager_weights(tmp_path):
    """model.compile: true (each block through torch.compile) changes the speed, not the numbers: 4 steps
    give the eager run's weights within float tolerance, under the same state_dict keys."""
    codes = make_code_folder(tmp_path / "codes")
    for name in ("eager", "compiled"):
        (tmp_path / name).mkdir()
        main(["fit", "-c", str(write_config(tmp_path / name, codes, compile=name == "compiled"))])
    eager, compiled = (
        torch.load(tmp_path / name / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("eager", "compiled")
    )
    assert compiled["hyper_parameters"]["compile"] and compiled["global_step"] == eager["global_step"] == 4
    assert compiled["state_dict"].keys() == eager["state_dict"].keys()
    losses = [
        [float(row["train/loss"]) for row in metrics(tmp_path / name / "logs" / "version_0") if row["train/loss"]]
        for name in ("eager", "compiled")
    ]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-6)
    # Fused kernels round differently; Adam divides each gradient by its own scale, so a weight whose
    # gradient is near zero can take a noise-driven step: allow 5% of one step (the learning rate).
    for key, value in eager["state_dict"].items():
        assert torch.allclose(compiled["state_dict"][key], value, atol=LEARNING_RATE / 20), key


# ---------------------------------------------------------------- bad input


def test_long_captions_are_counted_in_one_warning(tmp_path):
    codes = make_code_folder(tmp_path / "codes")
    text_len = 8  # room for 7 tokens: every two-object caption and every "… on black" line is cut
    lines = [line for i in range(N_TRAIN) for line in item_captions(i)]
    too_long = sum(len(line.split()) + 1 > text_len for line in lines)
    assert 0 < too_long < len(lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = GPTPriorModule(
            str(codes), {"text_len": text_len, "n_layer": 1, "n_head": 1, "n_embd": 8}, vocab_size=256
        )
    truncations = [w for w in caught if "truncated" in str(w.message)]
    assert len(truncations) == 1 and f"{too_long} of {len(lines)} captions" in str(truncations[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens = module.text_tokens(lines[:8])  # batches are cut quietly: the count was given once, up front
    assert tokens.shape == (8, text_len)


def test_missing_codes_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(write_config(tmp_path, tmp_path / "no-codes"))])
    message = str(exit_info.value.code)
    assert message.startswith("gpt-prior: error:") and "vqgan-clip encode" in message and "\n" not in message


def test_one_codes_flag_sets_the_data_and_the_model(fitted, tmp_path, capsys):
    saved = torch.load(fitted["checkpoint"], weights_only=True)
    assert saved["hyper_parameters"]["codes"] == str(fitted["codes"])  # the fixture passed only --data.codes
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(write_config(tmp_path, fitted["codes"])), "--model.codes", str(fitted["codes"])])
    assert 'must be given via "data.codes"' in capsys.readouterr().err
