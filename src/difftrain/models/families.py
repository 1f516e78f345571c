"""Pretrained pipeline families difftrain fine-tunes, told apart by `model_index.json`.

Each family names its diffusers pipeline class, the denoiser's subfolder, and its text
encoders and tokenizers in the order the pipeline encodes a prompt. Nothing here loads weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    """One pipeline layout: `sd` (1.x/2.x), `sdxl`, `sd3` or `flux`."""

    name: str
    pipeline: str  # diffusers pipeline class (saves/loads LoRA files, merged exports)
    denoiser: str  # subfolder: unet or transformer
    text_encoders: tuple[str, ...]
    tokenizers: tuple[str, ...]
    t5: bool = False  # the last encoder is a T5 (its length is text.max_length; CLIPs keep 77)

    @property
    def subfolders(self) -> tuple[str, ...]:
        """Every subfolder a saved pipeline of this family has."""
        return (self.denoiser, "vae", *self.text_encoders, *self.tokenizers, "scheduler")

    @property
    def flow(self) -> bool:
        """Rectified-flow transformer families (objective flow) rather than ε/v U-Nets."""
        return self.denoiser == "transformer"


SD = Family("sd", "StableDiffusionPipeline", "unet", ("text_encoder",), ("tokenizer",))
SDXL = Family(
    "sdxl", "StableDiffusionXLPipeline", "unet", ("text_encoder", "text_encoder_2"),
    ("tokenizer", "tokenizer_2"),
)  # fmt: skip
SD3 = Family(
    "sd3", "StableDiffusion3Pipeline", "transformer",
    ("text_encoder", "text_encoder_2", "text_encoder_3"),
    ("tokenizer", "tokenizer_2", "tokenizer_3"), t5=True,
)  # fmt: skip
FLUX = Family(
    "flux", "FluxPipeline", "transformer", ("text_encoder", "text_encoder_2"),
    ("tokenizer", "tokenizer_2"), t5=True,
)  # fmt: skip
FAMILIES = {f.pipeline: f for f in (SD, SDXL, SD3, FLUX)}


def detect_family(path: Path) -> Family:
    """The family of a pipeline folder from its model_index.json (none: an SD 1.x/2.x layout).

    Raises ValueError naming the class when the pipeline is of another kind.
    """
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return SD  # older folders saved without an index: the SD layout is checked next
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{index}: not a readable model_index.json ({err})") from None
    if name not in FAMILIES:
        raise ValueError(
            f"{index}: pipeline class {name!r} is not supported (supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[name]
