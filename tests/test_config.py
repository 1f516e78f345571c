"""Bad configuration fails before any data or model loads: exit 2, message names key and fix."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError, load_config

from .conftest import TINY

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=1e-3", ["optim.lrr", "unknown key", "did you mean 'optim.lr'"]),
        ("optim.lr=fast", ["optim.lr", "'fast'", "valid number"]),
        ("train.batch_size=0", ["train.batch_size", "0", "greater than 0"]),
        ("data.resolution=9", ["data.resolution = 9", "divisible by 2", "try 8"]),
        ("data.source=folder", ["data.path is required"]),
        ("model.preset=unet-huge", ["model.preset", "unet-huge", "unet-small"]),
        ("optim.name=adagrad", ["optim.name", "adagrad", "'adamw'"]),
        ("train.grad_accum=3", ["batch_size (64) must be divisible by grad_accum (3)"]),
        ("diffusion.sigma_min=100", ["sigma_min", "below sigma_max"]),
    ],
)
def test_bad_values_exit_2_naming_the_key(override, expected, tmp_path):
    res = run_cli(
        "train", str(TINY), "--set", override, "--set", f"train.run_dir={tmp_path}/r", "--dry-run"
    )
    assert res.exit_code == 2, res.output
    for text in expected:
        assert text in res.output, (text, res.output)
    assert not (tmp_path / "r").exists()  # nothing was written


def test_missing_data_path_names_the_path(tmp_path):
    res = run_cli(
        "train", str(TINY), "--set", "data.source=folder", "--set", f"data.path={tmp_path}/nope"
    )
    assert res.exit_code == 2
    assert "data.path" in res.output and "does not exist" in res.output


def test_missing_config_file_and_bad_yaml(tmp_path):
    res = run_cli("train", str(tmp_path / "none.yaml"))
    assert res.exit_code == 2 and "does not exist" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    res = run_cli("train", str(bad))
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_unknown_section_and_malformed_override():
    with pytest.raises(ConfigError, match="datta: unknown key"):
        load_config(TINY, ["datta.path=x"])
    with pytest.raises(ConfigError, match="has no '='"):
        load_config(TINY, ["optim.lr"])


def test_overrides_are_typed_and_repeatable():
    cfg = load_config(TINY, ["optim.lr=2e-4", "optim.lr=3e-4", "train.seed=7", "data.hflip=true"])
    assert cfg.optim.lr == 3e-4 and cfg.train.seed == 7 and cfg.data.hflip is True


def test_dry_run_prints_sizes_and_writes_nothing(tmp_path):
    res = run_cli("train", str(TINY), "--set", f"train.run_dir={tmp_path}/r", "--dry-run")
    assert res.exit_code == 0, res.output
    for text in [
        "train_images: 1617",
        "val_images: 180",
        "parameters:",
        "steps_per_epoch: 25.27",
        "total_steps: 200",
        "preset: unet-tiny",
    ]:
        assert text in res.output, text
    assert not (tmp_path / "r").exists()
