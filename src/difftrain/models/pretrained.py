"""Pretrained Stable Diffusion pieces: the pipeline folder's U-Net as a text backbone, LoRA
adapters through peft, and the refusal of pickled weights.

A diffusers Stable Diffusion 1.x/2.x folder holds `unet/` (UNet2DConditionModel), `vae/`
(AutoencoderKL), `text_encoder/` (CLIPTextModel), `tokenizer/` (CLIPTokenizer) and
`scheduler/scheduler_config.json`. Weights are read as safetensors only; a pickled file
(`.ckpt`, `.bin`, `.pt`) can run code when unpickled, so it is refused unless the caller allows
it, and then read with `torch.load(weights_only=True)`, which builds tensors and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from difftrain.models.conditioned import CondUNetBackbone
from difftrain.models.text import TextEncoder

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class PretrainedError(ValueError):
    """A pretrained model path that cannot be used as given (message names the fix)."""


def load_pickled_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A pickled checkpoint's tensors, only when allowed and only with `weights_only=True`."""
    if not allow_pickle:
        raise PretrainedError(
            f"{path}: a pickled checkpoint can execute code when loaded, so it is refused; "
            "convert it to .safetensors, or set model.allow_pickle = true to read it with "
            "torch.load(weights_only=True)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for any non-tensor global: the payload never ran
        raise PretrainedError(
            f"{path}: not a plain tensor checkpoint; torch.load(weights_only=True) refused it "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PretrainedError(f"{path}: holds no state dict of tensors")
    return sd


def read_json(path: Path) -> dict:
    """A JSON object from a pipeline folder (untrusted: type-checked)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PretrainedError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"{path}: expected a JSON object")
    return data


def check_pipeline_dir(path: Path, subfolders: tuple[str, ...] = SUBFOLDERS) -> None:
    """A diffusers pipeline folder: every subfolder present, model weights in safetensors."""
    if not path.is_dir():
        raise PretrainedError(f"{path}: no such directory (a local diffusers pipeline folder)")
    missing = [s for s in subfolders if not (path / s).is_dir()]
    if missing:
        raise PretrainedError(
            f"{path}: not a complete pipeline folder, missing {', '.join(missing)}/ "
            "(save one with the pipeline's save_pretrained)"
        )
    for sub in subfolders:
        if sub.startswith(("tokenizer", "scheduler")):
            continue
        if not list((path / sub).glob("*.safetensors")):
            pickled = [p.name for p in (path / sub).iterdir() if p.suffix in PICKLE_SUFFIXES]
            why = f" (only pickled {', '.join(pickled)})" if pickled else ""
            raise PretrainedError(
                f"{path / sub}: no .safetensors weights{why}; difftrain reads safetensors only "
                "here: re-save with save_pretrained(safe_serialization=True)"
            )


def load_unet(path: Path):
    """The pipeline's UNet2DConditionModel (float32, safetensors only, never the hub)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(
        path, subfolder="unet", use_safetensors=True, local_files_only=True
    ).float()


class TextStateCache:
    """Memoises a frozen text encoder's states per token row (prompts repeat: DreamBooth, "").

    The encoder may return one tensor or a tuple of them (states, pooled embedding), one row
    per prompt each. A plain object, not a module: the encoder stays registered once, under the
    backbone.
    """

    def __init__(self, text: nn.Module, max_rows: int = 4096):
        self.text, self.max_rows = text, max_rows
        self.rows: dict[tuple[str, bytes], tuple[torch.Tensor, ...]] = {}

    def __call__(self, cond: torch.Tensor | None, batch: int):
        if not self.text.frozen:  # a trained encoder's states change every step
            return self.text(cond, batch)
        ids = self.text.ids(cond, batch)
        keys = [(str(ids.device), r.cpu().numpy().tobytes()) for r in ids]
        todo = [i for i, k in enumerate(keys) if k not in self.rows]
        single = True
        if todo:
            fresh = self.text(ids[todo], len(todo))
            single = isinstance(fresh, torch.Tensor)
            parts = (fresh,) if single else tuple(fresh)
            for j, i in enumerate(todo):
                if len(self.rows) < self.max_rows:  # bounded: a caption set larger than this
                    self.rows[keys[i]] = tuple(p[j].detach() for p in parts)  # is re-encoded
            if len(self.rows) < len(set(keys)):
                return self.text(ids, batch)
        else:
            single = len(self.rows[keys[0]]) == 1
        out = tuple(torch.stack(p) for p in zip(*(self.rows[k] for k in keys), strict=True))
        return out[0] if single else out


class PretrainedUNetBackbone(CondUNetBackbone):
    """CondUNetBackbone around a pipeline's own U-Net and CLIP text encoder."""

    def __init__(self, unet: nn.Module, text: TextEncoder, cache_text: bool = True):
        nn.Module.__init__(self)  # the parent builds a U-Net from a preset; this one is given
        self.unet, self.text = unet, text
        self._cache = TextStateCache(text) if cache_text else None

    def forward(self, x, noise_cond, cond=None):
        encode = self._cache if self._cache is not None else self.text
        states = encode(cond, x.shape[0])  # B×L×width
        return self.unet(x, noise_cond, encoder_hidden_states=states.to(x.dtype)).sample


def add_lora(
    module: nn.Module, rank: int, alpha: float | None, dropout: float, targets: list[str]
) -> None:
    """Freeze `module` and add peft LoRA adapters (B = 0 at start: the output is unchanged).

    Works on diffusers models and transformers models alike (both have `add_adapter`).
    """
    from peft import LoraConfig

    module.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        lora_dropout=dropout,
        init_lora_weights=True,
        target_modules=list(targets),
    )
    try:
        if hasattr(module, "set_adapters"):  # diffusers models: their peft integration
            module.add_adapter(config)
        else:  # transformers models: peft directly (their add_adapter needs peft >= 0.22)
            from peft import inject_adapter_in_model

            inject_adapter_in_model(config, module)
    except ValueError as err:  # peft: a target name matched no layer
        raise PretrainedError(f"LoRA target modules {list(targets)}: {err}") from None


def lora_layers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's LoRA weights in diffusers' file format (keys as `load_lora_weights` reads)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))


LORA_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights looks for


def write_lora_file(
    pipeline: str, layers: dict[str, nn.Module | None], out_dir: Path, convert: bool = True
) -> Path:
    """Save the adapters as one diffusers LoRA safetensors file (atomically replaced).

    `pipeline` names the diffusers pipeline class whose `save_lora_weights` writes it; `layers`
    maps its keyword (`unet_lora_layers`, `transformer_lora_layers`, …) to the adapted module.
    `convert`: peft → diffusers key names (U-Net pipelines; transformer pipelines store peft's).
    """
    import os
    import shutil
    import uuid

    import diffusers
    from peft.utils import get_peft_model_state_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    state = {
        key: (lora_layers(m) if convert else get_peft_model_state_dict(m))
        for key, m in layers.items()
        if m is not None
    }
    try:
        getattr(diffusers, pipeline).save_lora_weights(tmp, **state, safe_serialization=True)
        os.replace(tmp / LORA_FILE, out_dir / LORA_FILE)
    finally:
        if tmp.exists():  # ours
            shutil.rmtree(tmp)
    return out_dir / LORA_FILE


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and remove it (in place); returns `module`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in list(module.named_modules()):
        if isinstance(sub, BaseTunerLayer):
            sub.merge()
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, sub.get_base_layer())
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False
    if hasattr(module, "peft_config"):
        del module.peft_config
    return module


class SDXLBackbone(nn.Module):
    """An SDXL U-Net with its two frozen CLIP encoders and micro-conditioning (Podell et al.
    2023, Sec. 2.2): add_time_ids = (original h, w, crop top, left, target h, w) in pixels.

    Every row is conditioned as uncropped at its own size — original = target = the latent
    size × the VAE factor, crop (0, 0) — which is what `StableDiffusionXLPipeline` passes by
    default at inference, so training and sampling see the same ids.
    """

    def __init__(self, unet: nn.Module, text: nn.Module, vae_factor: int, cache_text=True):
        super().__init__()
        self.unet, self.text, self.vae_factor = unet, text, vae_factor
        self._cache = TextStateCache(text) if cache_text else None

    def time_ids(self, x: torch.Tensor) -> torch.Tensor:
        """B×6 micro-conditioning ids of latents x (B×C×h×w)."""
        h, w = x.shape[-2] * self.vae_factor, x.shape[-1] * self.vae_factor
        row = torch.tensor([h, w, 0, 0, h, w], device=x.device, dtype=x.dtype)
        return row.expand(x.shape[0], -1)

    def forward(self, x, noise_cond, cond=None):
        states, pooled = (self._cache or self.text)(cond, x.shape[0])
        added = {"text_embeds": pooled.to(x.dtype), "time_ids": self.time_ids(x)}
        return self.unet(
            x, noise_cond, encoder_hidden_states=states.to(x.dtype), added_cond_kwargs=added
        ).sample
