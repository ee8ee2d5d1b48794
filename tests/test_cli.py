import importlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from vqgan_clip.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqgan_clip", *args], capture_output=True, text=True)


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "data" in result.stdout and "demo" in result.stdout


def test_data_shapes_writes_a_folder(tmp_path, capsys):
    main(["data", "shapes", str(tmp_path / "s"), "--n", "5", "--size", "32", "--split", "novel"])
    assert len(list((tmp_path / "s").glob("*.png"))) == 5
    labels = json.loads((tmp_path / "s" / "000000.json").read_text())
    assert labels["caption"] == (tmp_path / "s" / "000000.txt").read_text().strip()
    assert "wrote 5 shapes pairs" in capsys.readouterr().out


def test_data_shard_from_a_folder_keeps_every_pair(tmp_path):
    main(["data", "shapes", str(tmp_path / "s"), "--n", "7", "--size", "16"])
    main(["data", "shard", str(tmp_path / "s"), str(tmp_path / "w"), "--shard-size", "3"])
    shards = sorted((tmp_path / "w").glob("*.tar"))
    assert len(shards) == 3
    names = [name for shard in shards for name in tarfile.open(shard).getnames()]
    assert sorted(n for n in names if n.endswith(".png")) == [f"{i:06d}.png" for i in range(7)]


def test_data_shard_run_again_resumes_an_interrupted_run(tmp_path, monkeypatch):
    from vqgan_clip import data_commands

    shapes_records = data_commands._shapes_records

    def interrupted(*args):
        yield from list(shapes_records(*args))[:4]
        raise KeyboardInterrupt

    command = ["data", "shard", "shapes", str(tmp_path / "w"), "--n", "7", "--size", "16", "--shard-size", "3"]
    monkeypatch.setattr(data_commands, "_shapes_records", interrupted)
    with pytest.raises(SystemExit, match="interrupted"):
        main(command)
    assert [p.name for p in sorted((tmp_path / "w").glob("*.tar"))] == ["shard-000000.tar"]
    monkeypatch.setattr(data_commands, "_shapes_records", shapes_records)
    with pytest.raises(SystemExit, match="another run"):  # other settings: not the run that stopped
        main([*command[:-1], "2"])
    main(command)
    main([*command[:3], str(tmp_path / "straight"), *command[4:]])
    resumed, straight = (sorted((tmp_path / name).glob("*.tar")) for name in ("w", "straight"))
    assert len(resumed) == 3 and [p.read_bytes() for p in resumed] == [p.read_bytes() for p in straight]


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    result = run_cli("data", "shard", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "error:" in result.stderr
    assert not (tmp_path / "out").exists()
    result = run_cli("data", "emoji", str(tmp_path / "e"), "--tarball", "twitter")
    assert result.returncode != 0 and "VENDOR=PATH" in result.stderr


@pytest.mark.parametrize("module", ["vqgan", "gpt_prior", "clip_rerank"])
def test_stage_commands_are_lightning_clis(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("fit", "validate", "test"))


SHIPPED_CONFIGS = [
    ("vqgan", ["configs/vqgan/shapes.yaml"]),
    ("vqgan", ["configs/vqgan/emoji.yaml"]),
    ("gpt_prior", ["configs/gpt_prior/shapes.yaml"]),
    ("gpt_prior", ["configs/gpt_prior/emoji.yaml"]),
    ("clip_rerank", ["configs/clip_rerank/shapes.yaml"]),
    ("clip_rerank", ["configs/clip_rerank/shapes.yaml", "configs/clip_rerank/shapes-rerank.yaml"]),
    ("clip_rerank", ["configs/clip_rerank/emoji.yaml"]),
]


@pytest.mark.parametrize("module, configs", SHIPPED_CONFIGS)
def test_shipped_training_configs_parse(module, configs, capsys, monkeypatch):
    """Every config the README tells users to run is one the stage's CLI accepts (keys and types)."""
    monkeypatch.chdir(Path(__file__).parent.parent)
    stage_main = importlib.import_module(f"{module}.cli").main
    with pytest.raises(SystemExit) as exited:
        stage_main(["fit", *[arg for config in configs for arg in ("-c", config)], "--print_config"])
    assert exited.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "max_steps:" in printed and "class_path:" in printed


def printed_config(module: str, args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"{module}.cli").main(["fit", *args, "--print_config"])
    assert exited.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("module", ["vqgan", "gpt_prior", "clip_rerank"])
def test_a_short_config_name_finds_the_packaged_config_from_any_folder(module, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)
    from_clone = printed_config(module, ["-c", f"configs/{module}/shapes.yaml"], capsys)
    monkeypatch.chdir(tmp_path)
    assert printed_config(module, ["-c", "shapes"], capsys) == from_clone
    assert printed_config(module, ["--config=shapes.yaml"], capsys) == from_clone


def test_an_unknown_config_name_is_one_line_listing_the_packaged_ones(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vqgan", "fit", "-c", "shapez"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "'shapez'" in result.stderr and "emoji, gpus, shapes, taming_f16" in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data", "shapes", "out", "--n", "-5"], "--n: must be >= 1, got -5"),
        (["data", "shapes", "out", "--size", "100000"], "--size: must be <= 1024 (the shapes are drawn for 32-256 px)"),
        (["tokenize", "--vqgan", "v", "--data", "d", "--out", "out", "--image-size", "100000"], "must be <= 2048"),
        (["optimize", "a red circle", "--size", "100000", "100000", "--out", "out"], "--size: must be <= 2048"),
        (["optimize", "a red circle", "--lr", "nan", "--out", "out"], "--lr: nan is not a finite number"),
        (["optimize", "a red circle", "--size", "0", "16", "--out", "out"], "--size: must be >= 1, got 0"),
    ],
)
def test_values_are_checked_before_anything_loads(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    message = str(exited.value.code)
    assert "error:" in message and expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()
