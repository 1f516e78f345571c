"""A diffusers SD 1.x-layout pipeline folder written as one original-layout (LDM / CompVis)
`.safetensors` file, as single-file checkpoints are published: `model.diffusion_model.*` (U-Net),
`first_stage_model.*` (VAE), `cond_stage_model.transformer.text_model.*` (CLIP text encoder).

The key layout is the CompVis one (input/middle/output blocks, in_layers/out_layers, the VAE's
down/up/mid.block_N and 1×1-conv attention); our own mapping, written for the tests, so that the
real single-file loader has a real file to read. Generic in levels and layers per block.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("conv_shortcut", "skip_connection")]  # fmt: skip
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_key(key: str, layers: int, up_attn: set[int]) -> str:
    """diffusers UNet2DConditionModel key → CompVis key (without the model prefix)."""
    head, _, tail = key.rpartition(".")  # tail: weight / bias
    for new, old in _TOP.items():
        if head == new:
            return f"{old}.{tail}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * (layers + 1) + j
        return f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else (
            f"input_blocks.{idx}.1.{rest}")  # fmt: skip
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * (layers + 1) + j
        return f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else (
            f"output_blocks.{idx}.1.{rest}")  # fmt: skip
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        b = int(m[1])
        return f"output_blocks.{b * (layers + 1) + layers}.{2 if b in up_attn else 1}.conv.{m[2]}"
    raise KeyError(f"no CompVis name for U-Net key {key}")


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key: str, levels: int) -> str:
    """diffusers AutoencoderKL key → CompVis key (without the first_stage_model prefix)."""
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv


def write_ldm_single_file(pipe_dir: Path, out: Path) -> Path:
    """The pipeline folder's U-Net, VAE and text encoder as one CompVis-layout safetensors."""
    import json

    ucfg = json.loads((pipe_dir / "unet" / "config.json").read_text())
    vcfg = json.loads((pipe_dir / "vae" / "config.json").read_text())
    layers = ucfg["layers_per_block"]
    up_attn = {i for i, t in enumerate(ucfg["up_block_types"]) if "CrossAttn" in t}
    sd: dict[str, torch.Tensor] = {}
    for k, v in load_file(pipe_dir / "unet" / "diffusion_pytorch_model.safetensors").items():
        sd["model.diffusion_model." + unet_key(k, layers, up_attn)] = v
    levels = len(vcfg["block_out_channels"])
    for k, v in load_file(pipe_dir / "vae" / "diffusion_pytorch_model.safetensors").items():
        name = vae_key(k, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # the CompVis VAE attention is 1×1 convolutions
        sd["first_stage_model." + name] = v
    for k, v in load_file(pipe_dir / "text_encoder" / "model.safetensors").items():
        sd["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    save_file({k: v.contiguous() for k, v in sd.items()}, out)
    return out
