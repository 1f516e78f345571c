"""The config of a reward fine-tuning run, built from a trained run directory.

`difftrain finetune-reward RUN --reward R` copies RUN's resolved config (data, model, diffusion),
adds a `reward` section naming RUN's checkpoint, and trains into a new run directory through the
one loop. Fine-tuning defaults differ from pre-training ones (a small constant learning rate, no
warm-up, a short run); every value can be changed with --set.
"""

from __future__ import annotations

from pathlib import Path

from difftrain.config import Config, ConfigError, load_config
from difftrain.config.load import apply_overrides, config_from_dict
from difftrain.eval.features import INFO_NAME
from difftrain.eval.rewards import REWARDS
from difftrain.pipeline.checkpoint import CheckpointError, latest_good_checkpoint


def parse_reward(text: str) -> dict:
    """`--reward` → reward keys: a built-in name, `mlp:PATH` or `python:module.path:function`."""
    if text in ("class-prob", "jpeg-compressibility", "jpeg-incompressibility"):
        return {"name": text}
    if text.startswith("mlp:") and len(text) > 4:
        return {"name": "mlp", "scorer": text[4:]}
    if text.startswith("python:") and len(text) > 7:
        return {"name": "python", "callable": text[7:]}
    raise ConfigError(
        f"--reward {text!r}: use one of class-prob, jpeg-compressibility, "
        "jpeg-incompressibility, mlp:SCORER.safetensors or python:module.path:function "
        f"(reward.name allows {', '.join(REWARDS)})"
    )


def source_checkpoint(run_dir: Path, name: str | None) -> Path:
    """RUN/checkpoints/NAME (which must stay inside it), or RUN's latest good checkpoint."""
    root = (run_dir / "checkpoints").resolve()
    if name is None:
        path = latest_good_checkpoint(root)
        if path is None:
            raise CheckpointError(f"{run_dir}: no complete checkpoint under checkpoints/")
        return path.resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_dir():
        raise ConfigError(
            f"--checkpoint {name!r}: not a checkpoint directory in {root}; name one such as "
            "step-0000200"
        )
    return path


# Fine-tuning defaults by method. DRaFT's are the recipe that met issue 15's target on the
# Fashion-MNIST demo model (bench/reward_fashion.sh): gradient through the last 3 sampler steps,
# a small learning rate, and the real batch's diffusion loss at weight 0.1. DRaFT-1 at lr 1e-4
# reached the accuracy too, but tripled FID (README "Reward fine-tuning").
METHOD_DEFAULTS = {
    "ddpo": {"lr": 1e-4, "reward": {}},
    "draft": {"lr": 2e-5, "reward": {"draft_k": 3, "data_weight": 0.1}},
}


def reward_config(
    run_dir: str | Path,
    reward: str,
    out: str | Path | None = None,
    *,
    method: str = "ddpo",
    checkpoint: str | None = None,
    max_steps: int = 100,
    lr: float | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """The reward run's config: RUN's, a `reward` section, fine-tuning defaults, then --set.

    `lr` None takes the method's default (METHOD_DEFAULTS); --set overrides every default.
    """
    src = Path(run_dir)
    if not (src / "config.yaml").is_file():
        raise ConfigError(f"{src}: not a run directory (no config.yaml); pass the train.run_dir")
    base = load_config(src / "config.yaml")
    if base.reward is not None:
        raise ConfigError(
            f"{src} is itself a reward run; continue it with `difftrain train {src} --resume` "
            "or start from its source"
        )
    data = base.model_dump(mode="json")
    defaults = METHOD_DEFAULTS.get(method, METHOD_DEFAULTS["ddpo"])
    data["reward"] = {
        **defaults["reward"],
        **parse_reward(reward),
        "source": str(src.resolve()),
        "checkpoint": str(source_checkpoint(src, checkpoint)),
        "method": method,
    }
    every = max(1, max_steps // 4)
    data["train"].update(
        run_dir=str(out if out is not None else f"{src}-reward"),
        max_steps=max_steps, checkpoint_every=every, sample_every=every, time_limit=None,
        early_stopping_patience=None,
    )  # fmt: skip
    lr = defaults["lr"] if lr is None else lr
    data["optim"].update(lr=lr, warmup_steps=0, schedule="constant")
    # The source's domain network scores (class-prob, mlp) and evaluates the reward run.
    candidates = [base.eval.feature_net, base.features.out, src / "features"]
    for features in (Path(c) for c in candidates if c is not None):
        if (features / INFO_NAME).is_file():
            data["eval"]["feature_net"] = str(features.resolve())
            break
    return config_from_dict(apply_overrides(data, overrides or []))
