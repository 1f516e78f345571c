"""Rectified-flow transformers of pretrained pipelines as difftrain backbones F(x, 1000·t, cond):
SD3's `SD3Transformer2DModel` (MM-DiT, Esser et al. 2024) and FLUX's `FluxTransformer2DModel`.

Both predict the velocity v = ε − x0 of x_t = (1−t)·x0 + t·ε, which is what `FlowPrecond` wraps
(c_noise = 1000·t). SD3 takes that timestep as is; FLUX takes t itself (its pipeline passes
timestep/1000) and works on 2×2 patches of the latents packed into a sequence, with positional
ids for image rows/columns and zeros for text tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from difftrain.models.pretrained import TextStateCache


def load_transformer(path: Path, family: str) -> nn.Module:
    """The pipeline's transformer/ (float32, safetensors only, never the hub)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = SD3Transformer2DModel if family == "sd3" else FluxTransformer2DModel
    return cls.from_pretrained(
        path, subfolder="transformer", use_safetensors=True, local_files_only=True
    ).float()


class FlowTransformerBackbone(nn.Module):
    """A pipeline's transformer + its frozen text encoders (states cached per prompt row)."""

    def __init__(self, transformer: nn.Module, text: nn.Module, cache_text: bool = True):
        super().__init__()
        self.transformer, self.text = transformer, text
        self._cache = TextStateCache(text) if cache_text else None

    def embeds(self, cond, batch: int):
        """(token states, pooled embedding) of the prompt rows."""
        return (self._cache or self.text)(cond, batch)


class SD3Backbone(FlowTransformerBackbone):
    """SD3: latents B×C×H×W in and out; timestep 1000·t."""

    def forward(self, x, noise_cond, cond=None):
        states, pooled = self.embeds(cond, x.shape[0])
        return self.transformer(
            hidden_states=x,
            timestep=noise_cond,
            encoder_hidden_states=states.to(x.dtype),
            pooled_projections=pooled.to(x.dtype),
        ).sample


def pack(x: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×(H/2·W/2)×4C: FLUX's 2×2 patch sequence (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` (FluxPipeline._unpack_latents)."""
    b = x.shape[0]
    x = x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int, device) -> torch.Tensor:
    """(h·w)×3 positions (0, row, col) of the packed patches (FluxPipeline's latent image ids)."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] += torch.arange(h, device=device)[:, None]
    ids[..., 2] += torch.arange(w, device=device)[None, :]
    return ids.reshape(h * w, 3)


class FluxBackbone(FlowTransformerBackbone):
    """FLUX: pack 2×2 patches, timestep t (= noise_cond/1000), distilled guidance if the model has
    a guidance embedding (FLUX.1-dev: the same fixed value in training and sampling)."""

    def __init__(self, transformer, text, guidance: float, cache_text: bool = True):
        super().__init__(transformer, text, cache_text)
        self.guidance = guidance

    def forward(self, x, noise_cond, cond=None):
        b, c, h, w = x.shape
        states, pooled = self.embeds(cond, b)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack(x),
            timestep=noise_cond / 1000,
            guidance=guidance,
            pooled_projections=pooled.to(x.dtype),
            encoder_hidden_states=states.to(x.dtype),
            txt_ids=torch.zeros(states.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=image_ids(h // 2, w // 2, x.device).to(x.dtype),
        ).sample
        return unpack(out, c, h, w)
