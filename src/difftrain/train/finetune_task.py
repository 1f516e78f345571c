"""Fine-tuning a pretrained pipeline as a task of the one loop: LoRA file export after each
checkpoint, and DreamBooth (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion
Models for Subject-Driven Generation"): every training image is conditioned on the instance
prompt, and the class-specific prior preservation loss (Eq. 2) adds λ·‖x̂(z_pr) − x_pr‖² on class
images that the *base* model generated from the class prompt before training.

Class images are generated once (sample i from seed (class_seed, i)) and cached in the run dir as
latents (`RUN/dreambooth/class_latents.safetensors` + `class.json`, and a decoded preview grid),
so a resume reuses them. Prior drift (`val/prior_drift`) regenerates the first class seeds with the
current weights and reports the mean squared latent difference to the base model's images: 0 at
the start, growing as the model forgets its class prior.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from difftrain.config import Config, ConfigError
from difftrain.data import to_uint8
from difftrain.pipeline.build import sampling_kwargs
from difftrain.pipeline.generate import generate, make_grid, save_image
from difftrain.pipeline.latent import sample_shape
from difftrain.pipeline.pretrained import write_run_lora
from difftrain.train.task import DiffusionTask
from difftrain.train.text_task import TextDiffusionTask

DB_DIR = "dreambooth"
LORA_DIR = "lora"


class PriorPreservationLoss:
    """Per-example L_instance + λ·L_prior: each instance row is paired with a random class row.

    Both halves go through the wrapped objective in one batch (same σ sampling and weighting).
    """

    def __init__(self, objective, class_x0: torch.Tensor, class_ids: torch.Tensor, weight: float):
        self.objective, self.class_x0, self.weight = objective, class_x0, weight
        self.class_ids = class_ids  # 1×L: the class prompt

    def __call__(self, denoiser, x0, cond=None, generator=None) -> torch.Tensor:
        n = x0.shape[0]
        device = generator.device if generator is not None else "cpu"
        pick = torch.randint(len(self.class_x0), (n,), generator=generator, device=device).cpu()
        prior = self.class_x0[pick].to(x0.device, x0.dtype)
        ids = self.class_ids.expand(n, -1).to(x0.device)
        loss = self.objective(denoiser, torch.cat([x0, prior]), torch.cat([cond, ids]), generator)
        return loss[:n] + self.weight * loss[n:]


class FinetuneTask(TextDiffusionTask):
    """A model.pretrained run: text-to-image task, plus LoRA export and DreamBooth when set."""

    validates_without_data = True  # DreamBooth: prior drift needs no held-out images

    def __init__(self, cfg: Config, data, val, latents=None, device="cpu"):
        super().__init__(cfg, data, val, latents)
        self.db = cfg.finetune.dreambooth
        if self.db is None:
            return
        if not cfg.sample.prompts:
            self.prompts = [self.db.instance_prompt] + (
                [self.db.class_prompt] if self.db.class_prompt else []
            )
        self.instance_ids = self.text.ids([self.db.instance_prompt])
        self.class_x0 = None
        if self.db.class_prompt is not None:
            self.class_ids = self.text.ids([self.db.class_prompt])
            self.class_x0 = self.class_latents(Path(cfg.train.run_dir), device)
            if self.db.prior_loss_weight > 0:
                self.objective = PriorPreservationLoss(
                    self.objective, self.class_x0, self.class_ids, self.db.prior_loss_weight
                )

    # ---- DreamBooth: conditions and class images ----
    def condition(self, batch, rows: slice, gen: torch.Generator) -> torch.Tensor:
        if self.db is None:
            return super().condition(batch, rows, gen)
        n = len(range(*rows.indices(len(batch.x))))
        return self.text.training_ids([self.db.instance_prompt] * n, gen)

    def _generate_class(self, model, num: int, device) -> torch.Tensor:
        """The class prompt's images (model-space latents) from `model`, seeds (class_seed, i)."""
        db, cfg = self.db, self.cfg
        model.to(device)
        was_training = model.training
        model.eval()
        try:
            return generate(
                model,
                num=num,
                shape=sample_shape(cfg),
                seed=db.class_seed,
                labels=self.class_ids.expand(num, -1),
                null_class=self.text.null(),
                guidance=db.class_guidance,
                device=device,
                batch_size=8,
                **sampling_kwargs(cfg, db.class_steps),
            )
        finally:
            model.train(was_training)

    def _class_meta(self) -> dict:
        db, cfg = self.db, self.cfg
        return {
            "class_prompt": db.class_prompt,
            "num_class_images": db.num_class_images,
            "class_seed": db.class_seed,
            "class_steps": db.class_steps,
            "class_guidance": db.class_guidance,
            "sampler": cfg.sample.sampler,
            "shape": list(sample_shape(cfg)),
            "pretrained": str(cfg.model.pretrained),
        }

    def class_latents(self, run_dir: Path, device) -> torch.Tensor:
        """Cached class latents of this run (validated), or generate them with the base model."""
        folder, meta = run_dir / DB_DIR, self._class_meta()
        tensors, info = folder / "class_latents.safetensors", folder / "class.json"
        if tensors.is_file() and info.is_file():
            try:
                saved = json.loads(info.read_text(encoding="utf-8"))
                x = load_file(tensors)["class_x0"]
            except (OSError, ValueError, KeyError) as err:
                raise ConfigError(f"{folder}: unreadable class-image cache ({err})") from None
            shape = (meta["num_class_images"], *meta["shape"])
            if saved != meta or tuple(x.shape) != shape or not torch.isfinite(x).all():
                raise ConfigError(
                    f"{folder}: class images were made with other settings than "
                    "finetune.dreambooth now asks; restore them or use a new train.run_dir"
                )
            return x.float()
        x = self._generate_class(self.model, self.db.num_class_images, device)
        if int(os.environ.get("RANK", "0")) == 0:  # one writer; every process made the same
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".class-{uuid.uuid4().hex[:8]}.tmp"
            save_file({"class_x0": x.contiguous()}, tmp)
            os.replace(tmp, tensors)
            info.write_text(json.dumps(meta, indent=1), encoding="utf-8")
            if self.latents is not None:
                preview = self.latents.to_images(x[:16])
                save_image(make_grid(to_uint8(preview)), folder / "class_images.png", min_side=256)
        return x

    # ---- Validation: held-out loss on the instance prompt, and prior drift ----
    def validate(self, model, x, y, device) -> dict[str, float]:
        out: dict[str, float] = {}
        if len(x):
            if self.db is None:
                out.update(super().validate(model, x, y, device))
            else:
                ids = self.instance_ids.expand(len(x), -1)
                out.update(DiffusionTask.validate(self, model, x, ids, device))
        if self.db is not None and self.class_x0 is not None and self.db.drift_images:
            k = min(self.db.drift_images, len(self.class_x0))
            now = self._generate_class(model, k, device)
            out["val/prior_drift"] = float(((now - self.class_x0[:k]) ** 2).mean())
        return out

    # ---- Export: the LoRA file (diffusers format) from the EMA weights ----
    def export(self, ema_model, run_dir: Path) -> None:
        super().export(ema_model, run_dir)
        if self.cfg.finetune.method == "lora":
            write_run_lora(self.cfg, ema_model.backbone, Path(run_dir) / LORA_DIR)
