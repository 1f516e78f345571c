"""Values that pass a type check but fail later (or never make sense) fail at config time with
exit 2 and the key; YAML alias bombs are refused; every printed message is bounded and literal."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from difftrain.cli.common import MAX_MESSAGE_CHARS
from difftrain.cli.main import app
from difftrain.config import ConfigError, load_config
from difftrain.config.load import MAX_YAML_VALUES
from difftrain.config.schema import MAX_SEED

from .conftest import TINY

runner = CliRunner()


def dry_run(tmp_path, *sets: str, config: str = str(TINY)):
    args = ["train", config, "--set", f"train.run_dir={tmp_path}/r", "--dry-run"]
    for s in sets:
        args += ["--set", s]
    return runner.invoke(app, args)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.block_out_channels=[-32,64]", ["model.block_out_channels", "between 1 and"]),
        ("model.block_out_channels=[0,64]", ["model.block_out_channels", "between 1 and"]),
        ("model.block_out_channels=[]", ["model.block_out_channels", "1 to 8 levels"]),
        ("model.layers_per_block=1000", ["model.layers_per_block", "less than or equal to 16"]),
        ("train.seed=100000000000000000000", ["train.seed", f"less than or equal to {MAX_SEED}"]),
        ("train.seed=-1", ["train.seed", "greater than or equal to 0"]),
        ("sample.seed=100000000000000000000", ["sample.seed", "less than or equal"]),
        ("eval.seed=100000000000000000000", ["eval.seed", "less than or equal"]),
        ("features.seed=100000000000000000000", ["features.seed", "less than or equal"]),
        ("optim.betas=[1.5,0.999]", ["optim.betas = [1.5, 0.999]", "[0, 1)"]),
        ("optim.betas=[0.9,1.0]", ["optim.betas", "[0, 1)"]),
        ("optim.betas=[-0.1,0.9]", ["optim.betas", "[0, 1)"]),
        ("data.resolution=1073741824", ["data.resolution", "less than or equal to 4096"]),
        ("data.buckets.resolutions=[64,100000]", ["data.buckets.resolutions", "4096"]),
        ("train.batch_size=1000000000", ["train.batch_size", "less than or equal to 65536"]),
        ("sample.num=1000000000", ["sample.num", "less than or equal to 1024"]),
        ("sample.steps=1000000000", ["sample.steps", "less than or equal to 10000"]),
        ("eval.num=1000000000", ["eval.num", "less than or equal to 100000"]),
        ("eval.steps=1000000000", ["eval.steps", "less than or equal to 10000"]),
        ("diffusion.sigma_max=.inf", ["diffusion.sigma_max", "finite number"]),
        ("optim.lr=.nan", ["optim.lr", "finite number"]),
        ("data.shuffle_buffer=1000000000", ["data.shuffle_buffer", "less than or equal"]),
        ("features.batch_size=1000000000", ["features.batch_size", "less than or equal"]),
    ],
)
def test_values_that_would_fail_later_exit_2_at_config_time(override, expected, tmp_path):
    res = dry_run(tmp_path, override)
    assert res.exit_code == 2, res.output
    for text in expected:
        assert text in res.output, (text, res.output)
    assert "Traceback" not in res.output


def test_too_many_training_timesteps_exit_2(tmp_path):
    res = dry_run(tmp_path, "diffusion.objective=vp", "diffusion.num_train_timesteps=1000000000")
    assert res.exit_code == 2, res.output
    assert "diffusion.num_train_timesteps" in res.output
    assert "less than or equal to 100000" in res.output


def test_largest_allowed_seed_seeds_torch(tmp_path):
    """The bound is what torch's generator accepts, through every seed mixer we use."""
    import torch

    from difftrain.data.order import mix_seed, split_indices
    from difftrain.samplers import sample_generators

    cfg = load_config(TINY, [f"train.seed={MAX_SEED}", f"sample.seed={MAX_SEED}"])
    torch.Generator().manual_seed(cfg.train.seed)
    torch.Generator().manual_seed(mix_seed(cfg.train.seed, 3, 1, 2))
    split_indices(20, 0.1, cfg.train.seed)
    assert len(sample_generators(cfg.sample.seed, range(2))) == 2


def test_bounds_leave_real_configs_alone():
    cfg = load_config(
        TINY,
        [
            "model.block_out_channels=[64,128]",
            "optim.betas=[0.0,0.99]",
            "train.batch_size=4096",
            "data.resolution=1024",
            "sample.num=1024",
        ],
    )
    assert cfg.optim.betas == (0.0, 0.99) and cfg.train.batch_size == 4096


BOMB = """\
train:
  batch_size:
    - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    - &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    - &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    - &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    - &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    - [*e,*e,*e,*e,*e,*e,*e,*e,*e]
"""  # 9**6 = 531,441 strings from ~400 bytes; the message once held its whole repr


def test_yaml_alias_bomb_is_refused_briefly(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError, match="aliases expand to more than") as info:
        load_config(path)
    assert len(str(info.value)) < 500
    res = runner.invoke(app, ["train", str(path), "--dry-run"])
    assert res.exit_code == 2 and "aliases expand" in res.output
    assert len(res.output) < 1000, len(res.output)


def test_yaml_alias_bomb_in_an_override_is_refused(tmp_path):
    value = "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
    value += "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
    value += "[*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"  # 10**5 ones and more
    res = dry_run(tmp_path, f"data.path={value}")
    assert res.exit_code == 2 and "aliases expand" in res.output, res.output[:2000]


def test_modest_aliases_still_work(tmp_path):
    path = tmp_path / "alias.yaml"
    text = TINY.read_text() + "\nsample:\n  steps: 12\n  num: &n 10\n"
    path.write_text(text.replace("sample:\n  steps: 12\n  num: 100\n", ""))
    assert load_config(path).sample.num == 10
    assert MAX_YAML_VALUES >= 10_000  # a config holds a few hundred values


def test_huge_values_are_cut_in_messages(tmp_path):
    """A long bad value (a 100 KB string for an int) gives a short message naming the key;
    a file far larger than any config is refused before it is parsed."""
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"train": {"batch_size": "x" * 100_000}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.batch_size" in str(info.value) and len(str(info.value)) < 1000
    res = runner.invoke(app, ["train", str(path), "--dry-run"])
    assert res.exit_code == 2 and len(res.output) < 1000, len(res.output)
    path.write_text(yaml.safe_dump({"train": {"batch_size": "x" * 2_000_000}}))
    with pytest.raises(ConfigError, match="is not a config file"):
        load_config(path)


def test_every_cli_error_message_is_bounded(tmp_path):
    """Whatever raises the error, the printer cuts it and says how much it left out."""
    res = dry_run(tmp_path, "x" * 6000 + ".y=1")  # an unknown section with a 6000-char name
    assert res.exit_code == 2
    assert "more characters not shown" in res.output
    assert len(res.output) < MAX_MESSAGE_CHARS + 200


def test_not_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  path: caf\xe9\n".encode("latin-1"))
    res = runner.invoke(app, ["train", str(path), "--dry-run"])
    assert res.exit_code == 2 and "UTF-8" in res.output, res.output


@pytest.mark.parametrize(
    "option, value",
    [("--seed", str(10**20)), ("--num", str(10**9)), ("--steps", str(10**9))],
)
def test_evaluate_options_are_bounded_like_the_config(tmp_path, option, value):
    res = runner.invoke(app, ["evaluate", str(tmp_path), option, value])
    assert res.exit_code == 2, res.output
    assert f"'{option}'" in res.output and "less than or equal" in res.output
