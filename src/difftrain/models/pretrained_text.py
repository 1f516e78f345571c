"""Prompts for pipelines with several text encoders (SDXL, SD3, FLUX): one row of token ids per
prompt holds every tokenizer's ids side by side, so caption dropout, guidance's null prompt,
batching and caching treat it like any single-tokenizer row; the encoder splits it again.

Each family turns its encoders' outputs into (token states, pooled embedding) exactly as its
diffusers pipeline's `encode_prompt` does (clip_skip unset):
- SDXL: penultimate hidden states of CLIP-L and CLIP-G side by side; pooled = CLIP-G's projection.
- SD3: the same CLIP pair, zero-padded to the T5 width and followed by T5's states along the
  sequence; pooled = both CLIP projections side by side.
- FLUX: T5's states; pooled = CLIP-L's pooled output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from difftrain.models.families import Family

CLIP_LENGTH = 77  # every CLIP tokenizer of these pipelines pads to 77 tokens


class MultiTokenizer:
    """Several tokenizers → one B×ΣL row per prompt (each part padded/truncated to its length)."""

    def __init__(self, tokenizers: list, lengths: list[int]):
        self.tokenizers, self.lengths = tokenizers, list(lengths)
        self.tokenizer = tokenizers[0]  # what readers of token strings (explain) look at
        self.max_length = sum(self.lengths)
        self.vocab_size = max(len(t) for t in tokenizers)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids B×ΣL: every tokenizer's ids of each text, concatenated."""
        parts = [
            tok(list(texts), padding="max_length", max_length=n, truncation=True,
                return_tensors="pt").input_ids.long()
            for tok, n in zip(self.tokenizers, self.lengths, strict=True)
        ]  # fmt: skip
        return torch.cat(parts, dim=1)


def part_lengths(family: Family, t5_length: int) -> list[int]:
    """Tokens per tokenizer: 77 for each CLIP, `t5_length` for a T5."""
    n = len(family.tokenizers)
    return [CLIP_LENGTH] * (n - 1) + [t5_length if family.t5 else CLIP_LENGTH]


def open_multi_tokenizer(path: Path, family: Family, t5_length: int) -> MultiTokenizer:
    """The family's tokenizers from a pipeline folder (local files only)."""
    from transformers import AutoTokenizer

    toks = [AutoTokenizer.from_pretrained(str(path / s), local_files_only=True)
            for s in family.tokenizers]  # fmt: skip
    return MultiTokenizer(toks, part_lengths(family, t5_length))


def load_text_encoders(path: Path, family: Family) -> list[nn.Module]:
    """The family's text encoders (safetensors only), classes as its model_index.json names."""
    import transformers

    from difftrain.models.pretrained import read_json

    index = read_json(path / "model_index.json")
    out = []
    for sub in family.text_encoders:
        entry = index.get(sub)
        name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        cls = getattr(transformers, str(name), None)
        allowed = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel")
        if name not in allowed or cls is None:
            raise ValueError(f"{path}/model_index.json: {sub} is {name!r}, not one of {allowed}")
        out.append(cls.from_pretrained(str(path / sub), use_safetensors=True,
                                       local_files_only=True).float())  # fmt: skip
    return out


def _clip_penultimate(model, ids):
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]  # states, and text_embeds (projection) or last state


def sdxl_embeds(models, parts):
    """SDXL: CLIP-L and CLIP-G penultimate states side by side; pooled = CLIP-G projection."""
    (l_states, _), (g_states, pooled) = (
        _clip_penultimate(m, p) for m, p in zip(models, parts, strict=True)
    )
    return torch.cat([l_states, g_states], dim=-1), pooled


def sd3_embeds(models, parts):
    """SD3: the CLIP pair padded to T5's width, then T5's states; pooled = both projections."""
    (l_states, l_pool), (g_states, g_pool) = (
        _clip_penultimate(m, p) for m, p in zip(models[:2], parts[:2], strict=True)
    )
    t5 = models[2](input_ids=parts[2])[0]
    clip = torch.cat([l_states, g_states], dim=-1)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat([l_pool, g_pool], dim=-1)


def flux_embeds(models, parts):
    """FLUX: T5's states; pooled = CLIP-L's pooled output."""
    pooled = models[0](input_ids=parts[0]).pooler_output
    return models[1](input_ids=parts[1])[0], pooled


EMBEDS = {"sdxl": sdxl_embeds, "sd3": sd3_embeds, "flux": flux_embeds}


class MultiTextEncoder(nn.Module):
    """Frozen text encoders: token rows B×ΣL → (states B×L'×D, pooled B×P), as the pipeline.

    Has the interface of `TextEncoder` that backbones and caches use (`ids`, `frozen`,
    `max_length`, `null_ids`); the encoders are never trained here (finetune checks that).
    """

    def __init__(self, models: list[nn.Module], lengths: list[int], null_ids, family: str):
        super().__init__()
        self.models = nn.ModuleList(models).requires_grad_(False).eval()
        self.lengths, self.family, self.frozen = list(lengths), family, True
        self.max_length = sum(self.lengths)
        self.register_buffer("null_ids", null_ids.reshape(1, -1).long(), persistent=False)

    def ids(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """`cond` (B×ΣL token ids) checked, or the empty prompt's ids when None."""
        if cond is None:
            return self.null_ids.expand(batch, -1)
        if cond.dim() != 2 or cond.shape != (batch, self.max_length) or cond.is_floating_point():
            raise ValueError(
                f"this model takes token ids of shape ({batch}, {self.max_length}); got "
                f"{tuple(cond.shape)} {cond.dtype} (class labels? use a prompt instead)"
            )
        return cond

    def train(self, mode: bool = True) -> MultiTextEncoder:
        super().train(mode)
        self.models.eval()  # frozen: no dropout
        return self

    def forward(self, cond: torch.Tensor | None, batch: int):
        parts = self.ids(cond, batch).split(self.lengths, dim=1)
        with torch.no_grad():
            return EMBEDS[self.family](list(self.models), parts)
