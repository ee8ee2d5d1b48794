"""`vqgan fit` end to end on tiny shapes: steps, logs, grids, exact resume, DDP, config errors, loading."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stage_configs import items_read, killed_after, read_log, run_fit, tiny_trainer, write_stage_config

import vqgan
from imagetext.shapes import ShapesDataset, write_shapes_folder
from vqgan.cli import main
from vqgan.lightning import VQGANModule

TINY = {
    "seed_everything": 0,
    "trainer": tiny_trainer(limit_train_batches=4, limit_val_batches=1),
    "model": {
        "config": {
            "embed_dim": 8,
            "n_embed": 16,
            "ddconfig": {
                "ch": 32,
                "ch_mult": [1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [8],
                "resolution": "${data.image_size}",
                "z_channels": 8,
            },
            "quantizer": {"ema": True, "restart_threshold": 0.5, "l2_normalize": True},
        },
        "perceptual_weight": 0.0,
        "disc_start": 2,
        "disc_ndf": 8,
        "disc_layers": 1,
        "grid_images": 4,
    },
    "data": {"source": "shapes", "image_size": 16, "batch_size": 4, "n_train": 16, "n_val": 4, "num_workers": 0},
}


def write_config(tmp_path: Path, **overrides) -> Path:
    return write_stage_config(TINY, tmp_path, **overrides)


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_fit_logs_saves_a_grid_and_a_loadable_checkpoint(tmp_path):
    main(["fit", "-c", str(write_config(tmp_path))])
    run = tmp_path / "logs" / "version_0"
    rows = metrics(run)
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/rec_loss", "train/d_loss", "train/d_weight", "val/psnr", "val/usage", "val/perplexity"} <= logged
    d_weights = [float(r["train/d_weight"]) for r in rows if r.get("train/d_weight")]
    assert d_weights[0] == 0.0 and d_weights[-1] > 0.0  # the discriminator switches on at disc_start
    assert (run / "reconstructions" / "epoch0000.png").is_file()

    model = vqgan.load(run / "checkpoints" / "last.ckpt")
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = model.encode_codes(images)
    assert codes.shape == (2, 8, 8) and codes.max() < 16
    bundle = vqgan.save(model, tmp_path / "tiny.safetensors")
    assert torch.equal(vqgan.load(bundle).decode_codes(codes), model.decode_codes(codes))


def test_resume_continues_exactly(tmp_path):
    config = write_config(tmp_path)
    main(["fit", "-c", str(config), "--trainer.max_epochs", "2"])
    straight = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)

    main(["fit", "-c", str(config), "--trainer.max_epochs", "1"])
    first_half = tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    main(["fit", "-c", str(config), "--trainer.max_epochs", "2", "--ckpt_path", str(first_half)])
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)

    assert resumed["global_step"] == straight["global_step"] > 4
    assert int(resumed["state_dict"]["generator_steps"]) == 8
    for key, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key].float(), value.float(), atol=1e-5), key


def test_resume_mid_epoch_continues_exactly(tmp_path):
    """Killed after its 3rd optimiser step (inside the first epoch), resumed from that step's checkpoint."""
    main(["fit", "-c", str(write_config(tmp_path)), "--trainer.max_epochs", "2"])
    straight = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    killed = write_config(tmp_path, **{"trainer.callbacks": [*TINY["trainer"]["callbacks"], *killed_after(3)]})
    main(["fit", "-c", str(killed), "--trainer.max_epochs", "2"])
    mid_epoch = tmp_path / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert 0 < int(torch.load(mid_epoch, weights_only=True)["state_dict"]["generator_steps"]) < 4
    main(["fit", "-c", str(write_config(tmp_path)), "--trainer.max_epochs", "2", "--ckpt_path", str(mid_epoch)])
    resumed = torch.load(tmp_path / "logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] and int(resumed["state_dict"]["generator_steps"]) == 8
    for key, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key].float(), value.float(), atol=1e-5), key


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqgan", *args], capture_output=True, text=True, timeout=600)


def test_config_mistakes_are_one_line_errors(tmp_path):
    result = run_cli("fit", "-c", str(write_config(tmp_path, **{"data.image_size": 17})))
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("vqgan: error:") and "use 16 or 18" in last_line

    result = run_cli("fit", "-c", str(write_config(tmp_path, **{"model.config.ddconfig.chmult": [1, 2]})))
    assert result.returncode != 0
    assert "does not accept option 'model.config.ddconfig.chmult'" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_two_process_ddp_fit_on_an_image_folder_reads_each_image_once(tmp_path):
    """2 CPU processes on a 20-image folder (16 to train): each rank trains on its own 8, every one of the 16
    once. The discriminator sits out the generator's backward, so DDP must look for unused parameters."""
    folder = write_shapes_folder(tmp_path / "images", n=20, image_size=16)
    data = {"data.source": "folder", "data.path": str(folder), "data.val_fraction": 0.2}
    callbacks = [*TINY["trainer"]["callbacks"], read_log(tmp_path / "read")]
    config = write_config(
        tmp_path,
        **data,
        **{"trainer.devices": 2, "trainer.strategy": "ddp_find_unused_parameters_true", "trainer.callbacks": callbacks},
    )
    run_fit("vqgan", config)
    assert (tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    read = items_read(tmp_path / "read")
    assert len(read[(0, 0)]) == len(read[(1, 0)]) == 8 and len(set(read[(0, 0)]) | set(read[(1, 0)])) == 16


def test_model_compile_compiles_the_networks_in_place():
    """model.compile: true hands the encoder, decoder and discriminator to torch.compile when the fit
    sets the model up (their first call compiles); the state_dict keys stay those of the eager model."""
    config = TINY["model"]["config"]
    model = dict(TINY["model"], config=dict(config, ddconfig=dict(config["ddconfig"], resolution=16)))
    module = VQGANModule(**model, compile=True)
    keys = list(module.state_dict())
    module.configure_model()
    for network in (module.model.encoder, module.model.decoder, module.discriminator):
        assert network._compiled_call_impl is not None
    assert module.model.quantize._compiled_call_impl is None and list(module.state_dict()) == keys


def test_accumulated_batches_step_as_one_larger_batch(tmp_path):
    """model.accumulate_grad_batches 2 over batches of 2 takes the steps of batches of 4: after 4 steps the
    same model (taming's plain quantiser and no discriminator, whose per-batch EMA updates and adaptive
    weight are not sums over the batch). Compared by what the models compute: a conv bias that a
    GroupNorm of one channel per group follows gets no gradient but rounding noise, which Adam turns
    into full-size steps, so such weights differ without changing any output."""
    plain = {"model.config.quantizer": {}, "model.disc_start": 100, "trainer.max_steps": 8}
    (tmp_path / "whole").mkdir(), (tmp_path / "halves").mkdir()
    whole = write_config(tmp_path / "whole", **plain, **{"trainer.limit_train_batches": 4})
    halves = write_config(
        tmp_path / "halves",
        **plain,
        **{"trainer.limit_train_batches": 8, "data.batch_size": 2, "model.accumulate_grad_batches": 2},
    )
    main(["fit", "-c", str(whole)])
    main(["fit", "-c", str(halves)])
    one, two = (
        torch.load(tmp_path / name / "logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("whole", "halves")
    )
    assert int(one["state_dict"]["generator_steps"]) == int(two["state_dict"]["generator_steps"]) == 4
    images = torch.stack([ShapesDataset(8, 16, seed=5)[i]["image"] for i in range(8)])
    whole_model, halves_model = (
        vqgan.load(tmp_path / name / "logs" / "version_0" / "checkpoints" / "last.ckpt") for name in ("whole", "halves")
    )
    with torch.no_grad():
        (whole_out, whole_codes), (halves_out, halves_codes) = whole_model(images), halves_model(images)
    assert torch.equal(whole_codes.codes, halves_codes.codes)
    assert torch.allclose(whole_out, halves_out, atol=1e-5)
