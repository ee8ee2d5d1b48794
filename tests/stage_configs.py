"""Writing the tiny YAML configs the stage tests run `fit` with."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import yaml


class StopAfterStep(pl.Callback):
    """Ends a fit right after optimiser step `step`, as a kill would: that step's checkpoint is on disk
    (with the every-step ModelCheckpoint of `killed_after`), the rest of the epoch is not run."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class ReadLog(pl.Callback):
    """Writes what each rank trained on, a line per item: `epoch<TAB>item`, into folder/rank-R.txt. An item
    is its shard key, its file path, or its code grid (code-shard batches carry no names)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "key" in batch:
            items = batch["key"]
        elif "path" in batch:
            items = batch["path"]
        else:
            items = [",".join(map(str, grid.flatten().tolist())) for grid in batch["codes"]]
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank-{trainer.global_rank}.txt", "a") as log:
            log.writelines(f"{trainer.current_epoch}\t{item}\n" for item in items)


def items_read(folder: Path) -> dict[tuple[int, int], list[str]]:
    """What ReadLog wrote: (rank, epoch) -> the items that rank trained on in that epoch, in order."""
    read: dict[tuple[int, int], list[str]] = {}
    for path in sorted(Path(folder).glob("rank-*.txt")):
        rank = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            epoch, item = line.split("\t")
            read.setdefault((rank, int(epoch)), []).append(item)
    return read


def read_log(folder: Path) -> dict:
    return {"class_path": "stage_configs.ReadLog", "init_args": {"folder": str(folder)}}


def killed_after(step: int) -> tuple[dict, dict]:
    """The callbacks of a fit that saves last.ckpt after every step and stops after `step`."""
    every_step = {
        "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": 0},
    }
    return every_step, {"class_path": "stage_configs.StopAfterStep", "init_args": {"step": step}}


def tiny_trainer(*callbacks: dict, **settings) -> dict:
    """The trainer block the stage tests share: one epoch on the CPU, CSV logs (their save_dir is set by
    `write_stage_config`), last.ckpt kept; extra `callbacks` and `settings` are added."""
    return {
        "max_epochs": 1,
        "log_every_n_steps": 1,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": {
            "class_path": "pytorch_lightning.loggers.CSVLogger",
            "init_args": {"save_dir": None, "name": "logs"},
        },
        "callbacks": [
            {
                "class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                "init_args": {"save_last": True, "save_top_k": 0},
            },
            *callbacks,
        ],
        **settings,
    }


def write_stage_config(base: dict, folder: Path, name: str = "tiny.yaml", **overrides) -> Path:
    """Write `base` to folder/name, with its CSV logs under `folder` and dotted-key overrides
    (`**{"data.image_size": 17}`) applied."""
    config = copy.deepcopy(base)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(folder)
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_fit(module: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m MODULE fit -c CONFIG ARGS` in a fresh process (which Lightning's DDP launcher can start
    again per rank), one thread per process, with this folder importable for test callbacks."""
    tests = str(Path(__file__).parent)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", module, "fit", "-c", str(config), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


DDP_ON_TWO_CPUS = {"trainer.devices": 2, "trainer.strategy": "ddp", "trainer.accelerator": "cpu"}
