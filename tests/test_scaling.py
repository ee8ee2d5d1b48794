"""Launch recipes: the `gpus` overlay of every stage parses, picks DDP with bf16, and under torchrun's
or SLURM's environment Lightning takes its ranks from the launcher; bad device settings are one line."""

import importlib

import pytest
import pytorch_lightning as pl
import pytorch_lightning.utilities.rank_zero
import yaml
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning_utilities.core.rank_zero import rank_zero_only as lightning_utilities_rank_zero_only
from pytorch_lightning.strategies import DDPStrategy

STAGES = {"vqgan": "ddp_find_unused_parameters_true", "gpt_prior": "ddp", "clip_rerank": "ddp"}
# Rank 5 (or 6) of 8 processes on 2 nodes of 4, as each launcher describes it to the process it starts.
LAUNCHERS = {
    "torchrun": (
        TorchElasticEnvironment,
        5,
        {
            **{"TORCHELASTIC_RUN_ID": "job", "RANK": "5", "LOCAL_RANK": "1", "GROUP_RANK": "1"},
            **{"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},
        },
    ),
    "slurm": (
        SLURMEnvironment,
        6,
        {
            **{"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "6", "SLURM_LOCALID": "2"},
            **{"SLURM_NODEID": "1", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_ID": "42"},
        },
    ),
}


def printed_trainer(module: str, args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"{module}.cli").main(["fit", *args, "--print_config"])
    assert exited.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)["trainer"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("stage", STAGES)
def test_the_gpus_overlay_runs_ddp_with_the_launchers_ranks(stage, launcher, capsys, monkeypatch):
    trainer_config = printed_trainer(stage, ["-c", "shapes", "-c", "gpus"], capsys)
    assert trainer_config["strategy"] == STAGES[stage]
    assert (trainer_config["accelerator"], trainer_config["precision"]) == ("gpu", "bf16-mixed")
    environment, rank, variables = LAUNCHERS[launcher]
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # Building the Trainer sets the process-wide rank that rank_zero_only checks: put it back afterwards,
    # or later fits in this process would think they are rank 5 and log nothing.
    for flag in (pytorch_lightning.utilities.rank_zero.rank_zero_only, lightning_utilities_rank_zero_only):
        monkeypatch.setattr(flag, "rank", flag.rank)
    # This machine has no GPU: the same strategy on CPUs shows what Lightning makes of the launcher.
    trainer = pl.Trainer(
        accelerator="cpu", devices=4, num_nodes=2, strategy=trainer_config["strategy"], logger=False, max_steps=1
    )
    assert isinstance(trainer.strategy, DDPStrategy)
    assert isinstance(trainer.strategy.cluster_environment, environment)
    assert (trainer.global_rank, trainer.world_size, trainer.node_rank) == (rank, 8, 1)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) == (stage == "vqgan")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trainer.accelerator", "gpu"], "trainer.accelerator=gpu needs a CUDA GPU"),
        (["--trainer.strategy", "fsdp"], "trainer.strategy=fsdp runs on GPUs only"),
        (["--trainer.strategy", "deepspeed_stage_3"], "trainer.strategy=deepspeed_stage_3 runs on GPUs only"),
    ],
)
def test_gpu_settings_on_a_machine_without_one_are_one_line(args, message, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exited:
        importlib.import_module("gpt_prior.cli").main(["fit", "-c", "shapes", *args])
    error = str(exited.value.code)
    assert error.startswith("gpt-prior: error:") and message in error and "\n" not in error
