"""Text-to-image training as a task of the one loop: captions → token ids with caption dropout,
validation on the held-out captions, and grids for a fixed list of prompts (one row each)."""

from __future__ import annotations

from pathlib import Path

import torch

from difftrain.config import Config, ConfigError
from difftrain.data import DataError, to_uint8
from difftrain.pipeline.build import sampling_kwargs
from difftrain.pipeline.generate import generate, make_grid, save_image
from difftrain.pipeline.latent import sample_shape
from difftrain.pipeline.text import TOKENIZER_FILE, TextConditioning, save_tokenizer
from difftrain.train.task import DiffusionTask

GRID_PROMPTS = 8  # default grid rows: the first distinct validation captions


def training_captions(data) -> list[str] | None:
    """The training split's captions of the loop's batches object (None when it has none)."""
    caps = getattr(data, "captions", None)
    if caps is None and hasattr(data, "data"):  # in-memory batches wrap an ImageData
        caps = getattr(data.data, "captions", None)
    return None if caps is None else list(caps)


def grid_prompts(
    cfg: Config, val_captions: list[str] | None, train_captions: list[str]
) -> list[str]:
    """sample.prompts, else the first distinct non-empty validation (or training) captions."""
    if cfg.sample.prompts:
        return list(cfg.sample.prompts)
    out: list[str] = []
    for c in (val_captions or []) + train_captions:
        if c.strip() and c not in out:
            out.append(c)
        if len(out) == GRID_PROMPTS:
            break
    return out or [""]


class TextDiffusionTask(DiffusionTask):
    """A denoiser whose backbone owns a text encoder; the condition of a row is its caption."""

    def __init__(self, cfg: Config, data, val, latents=None):
        captions = training_captions(data)
        # A streamed dataset's captions arrive with its batches (checked there); only the BPE
        # tokenizer needs them all up front, and says so when they are missing.
        streamed = cfg.data.loader == "stream" and cfg.latent.autoencoder is None
        if captions is None and not streamed:
            raise ConfigError(
                f"text.encoder = {cfg.text.encoder!r} needs captions, and the data has none; "
                "add metadata.jsonl / metadata.csv or .txt side-cars, or set "
                "data.caption_policy = 'filename'"
            )
        super().__init__(cfg, None, latents)
        self.text = TextConditioning.open(cfg, cfg.train.run_dir, captions)
        self.val_captions = getattr(val, "captions", None)
        self.prompts = grid_prompts(cfg, self.val_captions, captions or [])

    def condition(self, batch, rows: slice, gen: torch.Generator) -> torch.Tensor:
        """Token ids of the micro-batch's captions, some dropped to "" (the guidance null)."""
        if batch.captions is None:
            raise DataError(f"a training batch has no captions (e.g. {batch.keys[:1]})")
        return self.text.training_ids(batch.captions[rows], gen)

    def validate(self, model, x, y, device) -> dict[str, float]:
        # Held-out captions condition the validation rows (the null prompt when there are none).
        ids = None
        if self.val_captions is not None and len(self.val_captions) >= len(x):
            ids = self.text.ids(self.val_captions[: len(x)])
        return super().validate(model, x, ids, device)

    def write_samples(self, model, path: Path, device) -> None:
        """One row per grid prompt, same seeds every time; the prompts go to samples/prompts.txt."""
        cfg, prompts = self.cfg, self.prompts
        cols = max(1, round(cfg.sample.num / len(prompts)))
        num = cols * len(prompts)
        cond, null = self.text.request(prompts, None, num)
        images = generate(
            model,
            num=num,
            shape=sample_shape(cfg),
            seed=cfg.sample.seed,
            labels=cond,
            null_class=null,
            guidance=cfg.sample.guidance,
            device=device,
            **sampling_kwargs(cfg),
        )
        if self.latents is not None:
            images = self.latents.to_images(images)
        save_image(make_grid(to_uint8(images), cols), path, min_side=256)
        (path.parent / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")

    def export(self, ema_model, run_dir: Path) -> None:
        # The BPE tokenizer trained at the start is part of the run (sampling needs it).
        if not (Path(run_dir) / TOKENIZER_FILE).exists():
            save_tokenizer(self.text.tokenizer, Path(run_dir))
        super().export(ema_model, run_dir)
