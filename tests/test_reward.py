"""Reward fine-tuning: DDPO and DRaFT-K raise a reward with a known optimum, the penalty holds
the weights near their start, the rewards score what they claim, and the CLI runs and refuses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError, load_config
from difftrain.config.load import config_from_dict
from difftrain.diffusion.loss import SlicedGenerator
from difftrain.eval.features import FeatureNet, FeatureNetSpec, save_feature_net
from difftrain.eval.rewards import (
    ClassProbability,
    FeatureMLP,
    JpegSize,
    PythonReward,
    build_reward,
    save_reward_mlp,
)
from difftrain.pipeline.build import build_objective
from difftrain.train.reward_policy import advantages, gaussian_log_prob
from difftrain.train.reward_task import RewardObjective, check_reward_config
from tests.run_fixtures import TINY, make_run

runner = CliRunner()
NEAR = "tests.reward_fixtures:near_target"


class ToyDenoiser(nn.Module):
    """EDM-preconditioned D with one weight: D = c_skip·x + c_out·b (an image of value b)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma, cond):
        s, sd = sigma.view(-1, 1, 1, 1), 0.5
        return sd**2 / (s**2 + sd**2) * x + s * sd / (s**2 + sd**2).sqrt() * self.b


def reward_cfg(**reward):
    data = load_config(TINY).model_dump(mode="json")
    data["reward"] = {"source": "/unused", "name": "python", "callable": NEAR, "steps": 6,
                      "clip_range": 0.2, **reward}  # fmt: skip
    return config_from_dict(data)


def tune(method: str, penalty: float = 0.0, steps: int = 60, batch: int = 32, **reward):
    """Adam on the toy; returns (rewards per step, distance to the start, final b)."""
    torch.manual_seed(0)
    model = ToyDenoiser()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = reward_cfg(method=method, penalty=penalty, **reward)
    obj = RewardObjective(cfg, PythonReward(NEAR), model, start, build_objective(cfg))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    rewards, clipped = [], []
    for step in range(steps):
        obj.begin_step(step)
        loss = obj(model, torch.zeros(batch, 1, 8, 8), None, SlicedGenerator(step, batch, 0, batch))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        rewards.append(obj.stats["reward/mean"])
        clipped.append(obj.stats.get("reward/clipped_fraction"))
    dist = float((model.b.detach() - start["b"]).abs())
    return rewards, dist, float(model.b.detach()), clipped


@pytest.mark.parametrize("method", ["ddpo", "draft"])
def test_reward_rises_towards_the_known_optimum(method):
    # reward = −mean (x − 0.3)²: at most 0, reached by images of value 0.3 (b ≈ 0.3 and above).
    rewards, _dist, b, _ = tune(method)
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.05, (first, last)
    assert last > -0.1 and b > 0.25


def test_huge_penalty_holds_the_weights_near_their_start():
    _, free, _, _ = tune("draft", penalty=0.0)
    _, held, _, _ = tune("draft", penalty=1e4)
    assert free > 0.3 and held < 0.05 * free
    _, free, _, _ = tune("ddpo", penalty=0.0, steps=30)
    _, held, _, _ = tune("ddpo", penalty=1e4, steps=30)
    assert held < 0.1 * free


@pytest.mark.parametrize("method", ["ddpo", "draft"])
def test_data_term_holds_samples_on_the_data(method):
    # The toy's training images are all 0 (the data) and the reward's optimum is 0.3: the
    # diffusion loss on the real batch (reward.data_weight) pulls b back towards the data.
    _, _, free, _ = tune(method, steps=40)
    _, _, held, _ = tune(method, steps=40, data_weight=50.0)
    assert free > 0.2 and abs(held) < 0.3 * free, (free, held)


def test_ddpo_reuse_moves_the_ratio_and_clips_it():
    # The first step of a sampled batch is on-policy (ratio 1, nothing clipped); reusing the
    # batch after an update moves the ratios, and those outside 1 ± clip_range are clipped.
    _, _, _, clipped = tune("ddpo", steps=4, reuse=2, clip_range=1e-4)
    assert clipped[0] == 0 and clipped[2] == 0
    assert clipped[1] > 0 and clipped[3] > 0


def test_draft_refuses_a_reward_without_gradient():
    cfg = reward_cfg(method="draft")
    model = ToyDenoiser()
    obj = RewardObjective(cfg, PythonReward("tests.reward_fixtures:detached"), model, {})
    with pytest.raises(ConfigError, match="differentiable"):
        obj(model, torch.zeros(4, 1, 8, 8), None, SlicedGenerator(0, 4, 0, 4))


def test_advantages_are_normalised_per_class():
    r = torch.tensor([1.0, 3.0, 10.0, 30.0, 5.0])
    y = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one sample: batch statistics
    a = advantages(r, y, clip=5.0)
    assert torch.allclose(a[:4], torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-4)
    assert math.isclose(float(a[4]), float((5 - r.mean()) / r.std(unbiased=False)), rel_tol=1e-4)
    assert float(advantages(torch.tensor([0.0, 100.0]), None, clip=0.5).abs().max()) == 0.5


def test_gaussian_log_prob_is_the_normal_density_per_dimension():
    x, m = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    std = torch.tensor(0.7)
    ref = torch.distributions.Normal(m, std).log_prob(x).flatten(1).mean(1)
    assert torch.allclose(gaussian_log_prob(x, m, std), ref, atol=1e-5)


# ---- the rewards ----


def tiny_feature_net(tmp_path, classes: int = 10):
    torch.manual_seed(0)
    net = FeatureNet(FeatureNetSpec(1, classes, width=8, feature_dim=6))
    save_feature_net(
        net,
        {
            "format": "difftrain-feature-net/1",
            "spec": {"channels": 1, "num_classes": classes, "width": 8, "feature_dim": 6},
        },
        tmp_path / "f",
    )
    return net, tmp_path / "f"


def test_class_probability_is_the_classifier_softmax_and_differentiable(tmp_path):
    net, folder = tiny_feature_net(tmp_path)
    reward = build_reward("class-prob", num_classes=10, feature_net=folder)
    assert isinstance(reward, ClassProbability)
    x = (torch.rand(4, 1, 8, 8) * 2 - 1).requires_grad_(True)
    y = torch.tensor([0, 3, 3, 9])
    out = reward(x, y)
    ref = net.embed_and_classify(x)[1].softmax(1)[torch.arange(4), y]
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="class-conditional"):
        build_reward("class-prob", num_classes=None, feature_net=folder)
    with pytest.raises(ConfigError, match="model has 3"):
        build_reward("class-prob", num_classes=3, feature_net=folder)


def test_jpeg_rewards_rank_a_flat_image_above_noise():
    flat = torch.zeros(1, 1, 32, 32)
    noise = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = torch.cat([flat, noise])
    comp = JpegSize(-1.0)(x, None)
    incomp = JpegSize(+1.0)(x, None)
    assert comp[0] > comp[1] and incomp[1] > incomp[0]
    assert torch.allclose(comp, -incomp)


def test_mlp_scorer_over_domain_features(tmp_path):
    net, folder = tiny_feature_net(tmp_path)
    torch.manual_seed(1)
    layers = [(torch.randn(5, 6), torch.randn(5)), (torch.randn(1, 5), torch.randn(1))]
    path = save_reward_mlp(layers, tmp_path / "scorer.safetensors", activation="tanh")
    reward = build_reward("mlp", num_classes=10, feature_net=folder, scorer=path)
    assert isinstance(reward, FeatureMLP)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    h = torch.tanh(net.embed_and_classify(x)[0] @ layers[0][0].T + layers[0][1])
    assert torch.allclose(
        reward(x, None), (h @ layers[1][0].T + layers[1][1]).squeeze(1), atol=1e-5
    )


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({"layers.0.weight": torch.randn(1, 7), "layers.0.bias": torch.randn(1)}, "layers.0"),
        ({"layers.0.weight": torch.randn(2, 6), "layers.0.bias": torch.randn(2)}, "2 outputs"),
        ({"w": torch.randn(1, 6)}, "keys"),
        (
            {"layers.0.weight": torch.full((1, 6), float("nan")), "layers.0.bias": torch.zeros(1)},
            "non-finite",
        ),
    ],
)
def test_malformed_mlp_scorer_is_refused(tmp_path, tensors, match):
    _, folder = tiny_feature_net(tmp_path)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ConfigError, match=match):
        build_reward("mlp", num_classes=10, feature_net=folder, scorer=path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="safetensors"):
        build_reward("mlp", num_classes=10, feature_net=folder, scorer=path)


def test_python_reward_is_checked():
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(
        PythonReward("tests.reward_fixtures:brightness")(x, None), x.mean((1, 2, 3))
    )
    with pytest.raises(ConfigError, match="shape"):
        PythonReward("tests.reward_fixtures:one_number")(x, None)
    for spec, match in [("no_such_module_xyz:f", "cannot import"), ("os.path", "module.path"),
                        ("tests.reward_fixtures:missing", "no function")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            PythonReward(spec)


def test_config_checks():
    with pytest.raises(ConfigError, match="not differentiable"):
        check_reward_config(reward_cfg(method="draft", name="jpeg-compressibility"))
    with pytest.raises(ConfigError, match="eta"):
        check_reward_config(reward_cfg(method="ddpo", eta=0.0))
    with pytest.raises(ConfigError, match="draft_k"):
        check_reward_config(reward_cfg(method="draft", draft_k=7))


# ---- through the CLI on a tiny model ----

FAST = ["--set", "train.batch_size=8", "--set", "reward.steps=3", "--set", "reward.val_num=4",
        "--set", "data.val_fraction=0.02", "--set", "logging.progress=false",
        "--set", "logging.tensorboard=false", "--set", "train.log_every=1"]  # fmt: skip


def finetune(*args):
    res = runner.invoke(app, ["finetune-reward", *[str(a) for a in args], *FAST])
    return res


def test_cli_fine_tunes_resumes_exactly_and_keeps_the_start(tmp_path):
    src = make_run(tmp_path / "src")
    common = ["--reward", "python:tests.reward_fixtures:brightness", "--set", "reward.reuse=2",
              "--set", "train.checkpoint_every=2", "--set", "train.keep_checkpoints=5",
              "--set", "reward.data_weight=0.5"]  # fmt: skip
    res = finetune(src, "--out", tmp_path / "a", "--max-steps", 4, *common)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "reward fine-tuning (ddpo" in res.output
    a = tmp_path / "a"
    rows = [json.loads(r) for r in (a / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/mean" in r for r in rows) and any("eval/reward" in r for r in rows)
    assert any("reward/data_loss" in r for r in rows)  # the real batch's diffusion loss
    assert load_config(a / "config.yaml").reward.name == "python"
    start = load_file(a / "checkpoints/step-0000004/reward_start.safetensors")
    source = load_file(src / "checkpoints/step-0000001/ema.safetensors")
    assert all(torch.equal(start[k], source[k]) for k in start)
    assert (a / "checkpoints/step-0000004/reward_cache.safetensors").is_file()
    # 2 steps, then --resume to 4 (mid-way through a reused batch): the same weights.
    res = finetune(src, "--out", tmp_path / "b", "--max-steps", 2, *common)
    assert res.exit_code == 0, res.output
    res = finetune(src, "--out", tmp_path / "b", "--max-steps", 4, "--resume", *common)
    assert res.exit_code == 0, res.output + repr(res.exception)
    wa = load_file(a / "checkpoints/step-0000004/model.safetensors")
    wb = load_file(tmp_path / "b/checkpoints/step-0000004/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--reward", "nonsense"], "--reward 'nonsense'"),
        (["--reward", "mlp:"], "--reward 'mlp:'"),
        (["--reward", "jpeg-compressibility", "--method", "draft"], "not differentiable"),
        (["--reward", "jpeg-compressibility", "--method", "ppo"], "--method"),
        (["--reward", "jpeg-compressibility", "--checkpoint", "../../x"], "--checkpoint"),
        (["--reward", "python:no_such_module_xyz:f"], "cannot import"),
        (["--reward", "class-prob", "--set", "reward.val_num=0"], "domain feature network"),
    ],
)
def test_cli_refuses_bad_rewards_with_exit_2(tmp_path, args, match):
    src = make_run(tmp_path / "src")
    res = finetune(src, "--out", tmp_path / "out", "--max-steps", 1, *args)
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert match in res.output


def test_method_defaults_and_set_overrides(tmp_path):
    # DRaFT defaults to the recipe measured on the Fashion-MNIST demo model (K = 3, lr 2e-5, the
    # data term at 0.1); DDPO keeps lr 1e-4 and no data term; --lr and --set win over both.
    from difftrain.train.reward_run import reward_config

    src = make_run(tmp_path / "src")
    draft = reward_config(src, "class-prob", tmp_path / "d", method="draft")
    assert (draft.reward.draft_k, draft.reward.data_weight, draft.optim.lr) == (3, 0.1, 2e-5)
    ddpo = reward_config(src, "class-prob", tmp_path / "p", method="ddpo")
    assert (ddpo.reward.data_weight, ddpo.optim.lr) == (0.0, 1e-4)
    mine = reward_config(
        src, "class-prob", tmp_path / "m", method="draft", lr=1e-4,
        overrides=["reward.draft_k=1", "reward.data_weight=0"],
    )  # fmt: skip
    assert (mine.reward.draft_k, mine.reward.data_weight, mine.optim.lr) == (1, 0.0, 1e-4)
