"""Reward fine-tuning as a task of the one loop: the step samples, scores and returns a loss.

The loop calls `objective(denoiser, x0, cond, gen)` per micro-batch as for any run; here the
objective ignores x0 (only its batch size counts), samples the model's own trajectories for the
classes that `condition` requests (balanced, guidance 1: the conditional model), scores them
with the reward, and returns the DDPO surrogate or DRaFT-K's −reward, plus λ·‖θ − θ_start‖².
Guards, clipping, EMA, checkpoints, resume and evaluation stay the loop's.

The checkpoint also holds the starting weights (`reward_start`, for the penalty) and, with
reward.reuse > 1, the sampled batch being reused (`reward_cache`), so --resume and rollbacks
continue exactly. Validation adds `eval/reward`: the mean reward of reward.val_num fixed-seed
samples from the EMA weights, which report.html plots next to FID and class accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from difftrain.config import Config, ConfigError
from difftrain.diffusion.loss import SlicedGenerator, drop_labels
from difftrain.eval.rewards import REWARDS, Reward, build_reward
from difftrain.pipeline.build import build_sigmas
from difftrain.pipeline.checkpoint import read_checkpoint
from difftrain.pipeline.generate import default_labels
from difftrain.pipeline.latent import sample_shape
from difftrain.train.reward_policy import (
    Trajectory,
    advantages,
    ddpo_loss,
    policy_steps,
    sample_chain,
)
from difftrain.train.task import DiffusionTask


def check_reward_config(cfg: Config) -> None:
    """Refuse settings reward fine-tuning cannot run, naming the key and the fix."""
    r = cfg.reward
    if r is None:
        return
    if r.name not in REWARDS:
        raise ConfigError(f"reward.name = {r.name!r}: allowed {', '.join(REWARDS)}")
    if cfg.latent.autoencoder is not None or cfg.text.encoder != "none":
        raise ConfigError(
            "reward fine-tuning supports pixel-space runs with classes or none (not latent or "
            "text runs); drop the reward section"
        )
    if cfg.data.source == "sequence" or cfg.model.kind != "diffusion":
        raise ConfigError("reward fine-tuning needs an image diffusion run as reward.source")
    if r.method == "ddpo" and r.eta == 0:
        raise ConfigError(
            "reward.method = ddpo needs a stochastic sampler: set reward.eta > 0 (1 = DDPM)"
        )
    if r.sigma_min >= cfg.diffusion.sigma_max:
        raise ConfigError(
            f"reward.sigma_min = {r.sigma_min} must be below diffusion.sigma_max = "
            f"{cfg.diffusion.sigma_max}"
        )
    if r.method == "draft" and r.draft_k > r.steps:
        raise ConfigError(f"reward.draft_k = {r.draft_k} exceeds reward.steps = {r.steps}")
    if r.method == "draft" and r.name.startswith("jpeg-"):
        raise ConfigError(
            f"reward {r.name} is not differentiable: DRaFT cannot backpropagate it; use "
            "reward.method = ddpo"
        )
    if r.name == "mlp" and r.scorer is None:
        raise ConfigError("reward.name = mlp needs reward.scorer = PATH (a safetensors MLP)")
    if r.name == "python" and not r.callable:
        raise ConfigError("reward.name = python needs reward.callable = 'module.path:function'")


class RewardObjective:
    """`loss(D, x0, cond, gen)`: DDPO surrogate or DRaFT-K −reward per example, plus penalty."""

    def __init__(
        self, cfg: Config, reward: Reward, model: torch.nn.Module, start: dict, data_objective=None
    ):
        self.r, self.reward, self.model, self.start = cfg.reward, reward, model, start
        self.data_objective = data_objective  # the diffusion loss of reward.data_weight
        self.data_cond: torch.Tensor | None = None  # this micro-batch's real labels (condition())
        chain_cfg = cfg.model_copy(deep=True)
        chain_cfg.diffusion.sigma_min = self.r.sigma_min
        self.sigmas = build_sigmas(chain_cfg, self.r.steps)
        self.steps = policy_steps(self.sigmas, self.r.eta)
        if self.r.method == "ddpo" and not self.steps:
            raise ConfigError("reward.steps: no stochastic step in the schedule; raise it")
        self.step, self.calls = 0, 0
        self.cache: dict[int, Trajectory] = {}  # micro-batch index → reused trajectory
        self.cache_step: int | None = None
        self.stats: dict[str, float] = {}

    def begin_step(self, step: int) -> None:
        self.step, self.calls = step, 0

    def penalty(self) -> torch.Tensor:
        """Σ‖θ − θ_start‖² over the trainable weights."""
        total = torch.zeros(())
        for name, p in self.model.named_parameters():
            if p.requires_grad and name in self.start:
                ref = self.start[name].to(p.device, p.dtype)
                total = total.to(p.device) + (p - ref).pow(2).sum()
        return total

    def _trajectory(self, denoiser, x0, cond, gen) -> Trajectory:
        """Sample (or reuse) this micro-batch's chains with the current weights as π_old."""
        m = self.calls
        fresh = self.step % self.r.reuse == 0 or m not in self.cache
        if not fresh and self.cache_step == self.step - self.step % self.r.reuse:
            return self.cache[m]
        with torch.no_grad():
            x, xs, logps = sample_chain(
                denoiser, tuple(x0.shape), self.sigmas, cond, self.r.eta, gen, x0.device
            )
            rewards = self.reward(x.clamp(-1, 1), cond)
        traj = Trajectory(
            torch.stack(xs), torch.stack(logps), advantages(rewards, cond, self.r.adv_clip),
            rewards.detach(), cond,
        )  # fmt: skip
        if self.r.reuse > 1:
            if m == 0:
                self.cache = {}
            self.cache[m], self.cache_step = traj, self.step - self.step % self.r.reuse
        return traj

    def __call__(self, denoiser, x0, cond=None, generator=None) -> torch.Tensor:
        r = self.r
        if r.method == "ddpo":
            traj = self._trajectory(denoiser, x0, cond, generator)
            k = max(1, round(r.timestep_fraction * len(self.steps)))
            pick = torch.randperm(len(self.steps), generator=generator)[:k].tolist()
            loss, clipped = ddpo_loss(
                denoiser, traj, self.sigmas, self.steps, pick, r.eta, r.clip_range
            )
            rewards = traj.rewards
            self.stats = {"reward/clipped_fraction": clipped}
        else:  # DRaFT-K: gradient through the last K sampler steps into the reward
            grad_from = r.steps - r.draft_k
            x, _xs, _lp = sample_chain(
                denoiser, tuple(x0.shape), self.sigmas, cond, r.eta, generator, x0.device,
                grad_from=grad_from,
            )  # fmt: skip
            rewards = self.reward(x.clamp(-1, 1), cond)
            if not rewards.requires_grad:
                raise ConfigError(
                    f"reward {self.reward.name!r} returned no gradient: DRaFT needs a "
                    "differentiable reward; use reward.method = ddpo"
                )
            loss = -rewards
            rewards = rewards.detach()
            self.stats = {}
        self.calls += 1
        pen = self.penalty() if r.penalty > 0 else torch.zeros((), device=loss.device)
        self.stats.update(
            {"reward/mean": float(rewards.mean()), "reward/distance": float(pen.detach().sqrt())}
        )
        loss = loss + r.penalty * pen.to(loss.device)
        if r.data_weight > 0:  # the ordinary denoising loss on the real batch (its own labels)
            cond_data = None if self.data_cond is None else self.data_cond.to(x0.device)
            data_loss = self.data_objective(denoiser, x0, cond_data, generator)
            self.stats["reward/data_loss"] = float(data_loss.detach().mean())
            loss = loss + r.data_weight * data_loss
        return loss


class RewardTask(DiffusionTask):
    """A pixel diffusion run fine-tuned on a reward; starts from reward.source's EMA weights."""

    aux_groups = ("reward_start", "reward_cache")

    def __init__(self, cfg: Config, num_classes: int | None):
        check_reward_config(cfg)
        super().__init__(cfg, num_classes)
        r = cfg.reward
        self.start = self._load_source(cfg)
        self.reward = build_reward(
            r.name, num_classes=num_classes, feature_net=cfg.eval.feature_net, scorer=r.scorer,
            callable_spec=r.callable, jpeg_quality=r.jpeg_quality,
        )  # fmt: skip
        self.diffusion_objective = self.objective  # for the validation losses
        self.objective = RewardObjective(
            cfg, self.reward, self.model, self.start, data_objective=self.diffusion_objective
        )

    def _load_source(self, cfg: Config) -> dict[str, torch.Tensor]:
        """Load the source checkpoint's EMA weights into the model; return a copy (θ_start)."""
        path = cfg.reward.checkpoint
        if path is None:
            raise ConfigError("reward.checkpoint is unset; start with `difftrain finetune-reward`")
        tensors, _state = read_checkpoint(Path(path), ["ema"])
        if "ema" not in tensors:
            raise ConfigError(f"reward.checkpoint {path}: has no ema.safetensors")
        try:
            self.model.load_state_dict(tensors["ema"])
        except RuntimeError as err:
            raise ConfigError(
                f"reward.checkpoint {path}: weights do not fit this config's model ({err}); "
                "keep the source run's model section"
            ) from None
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def begin_step(self, step: int) -> None:
        self.objective.begin_step(step)

    def condition(self, batch, rows: slice, gen: torch.Generator) -> torch.Tensor | None:
        """Balanced classes (guidance 1: never the null class); None for unconditional runs.

        With reward.data_weight > 0 the real rows' labels, dropped to the null class at
        train.label_dropout as in pre-training, are kept for the diffusion loss on those rows.
        """
        if self.num_classes is None:
            return None
        if self.cfg.reward.data_weight > 0:
            rate = self.cfg.train.label_dropout
            self.objective.data_cond = drop_labels(batch.labels[rows], rate, self.num_classes, gen)
        n = len(range(*rows.indices(len(batch.x))))
        start = rows.start or 0
        if isinstance(gen, SlicedGenerator):  # global rows, so the layout is process-count free
            start += gen.start
        return (torch.arange(start, start + n) + self.objective.step) % self.num_classes

    def log_metrics(self) -> dict[str, float]:
        return dict(self.objective.stats)

    def aux_state(self):
        groups = {"reward_start": self.start}
        obj = self.objective
        if obj.cache:
            cache = {}
            for m, t in obj.cache.items():
                cache.update({f"{m}.xs": t.xs, f"{m}.log_probs": t.log_probs,
                              f"{m}.advantages": t.advantages, f"{m}.rewards": t.rewards})  # fmt: skip
                if t.cond is not None:
                    cache[f"{m}.cond"] = t.cond
            groups["reward_cache"] = cache
        return groups, {"reward_cache_step": obj.cache_step}

    def load_aux_state(self, groups, state) -> None:
        if "reward_start" in groups:
            self.start.clear()
            self.start.update(groups["reward_start"])
        obj = self.objective
        obj.cache, obj.cache_step = {}, state.get("reward_cache_step")
        cache = groups.get("reward_cache", {})
        for m in sorted({int(k.split(".")[0]) for k in cache}):
            obj.cache[m] = Trajectory(
                cache[f"{m}.xs"], cache[f"{m}.log_probs"], cache[f"{m}.advantages"],
                cache[f"{m}.rewards"], cache.get(f"{m}.cond"),
            )  # fmt: skip

    @torch.no_grad()
    def validate(self, model, x, y, device) -> dict[str, float]:
        out = {}
        if len(x):  # the denoising losses, with the diffusion objective (not the reward's)
            reward_objective, self.objective = self.objective, self.diffusion_objective
            try:
                out.update(super().validate(model, x, y, device))
            finally:
                self.objective = reward_objective
        n = self.cfg.reward.val_num
        if n:
            labels = default_labels(n, self.num_classes)
            gen = torch.Generator().manual_seed(self.cfg.eval.seed)
            shape = (n, *sample_shape(self.cfg))
            cond = None if labels is None else labels.to(device)
            img, _xs, _lp = sample_chain(
                model, shape, self.objective.sigmas, cond, self.cfg.reward.eta, gen, device
            )
            out["eval/reward"] = float(self.reward(img.clamp(-1, 1), cond).mean())
        return out
