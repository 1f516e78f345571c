"""Fine-tuning a pretrained Stable Diffusion pipeline folder: resolve the config from the
folder (scheduler → `vp` objective, vae/ → latents, text_encoder/ + tokenizer/ → text), check it,
and build the backbone with what `finetune` says is trainable (full weights or LoRA adapters).

`resolve_pretrained` runs before anything else in `train`, so the run's saved `config.yaml`
carries the mapped values and sampling, export and serving need no pipeline folder logic.
A value the user set explicitly that disagrees with the pipeline is an error, never overridden.
The folder's model_index.json names its family (models/families.py): SD 1.x/2.x and SDXL U-Nets
map to `vp`; SD3 and FLUX transformers to `flow` (pipeline/pretrained_flow.py).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from difftrain.config import Config, ConfigError
from difftrain.config.schema import FinetuneConfig
from difftrain.diffusion import make_alphas_cumprod, vp_sigmas
from difftrain.models.families import Family, detect_family
from difftrain.models.pretrained import (
    PICKLE_SUFFIXES,
    PretrainedError,
    PretrainedUNetBackbone,
    SDXLBackbone,
    add_lora,
    check_pipeline_dir,
    load_pickled_state_dict,
    load_unet,
    read_json,
    write_lora_file,
)

_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled-linear",
                   "squaredcos_cap_v2": "cosine"}  # fmt: skip
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def pipeline_path(cfg: Config) -> Path:
    """model.pretrained as a checked pipeline folder; files are refused with the reason."""
    path = Path(cfg.model.pretrained)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            try:  # refused unless allowed; then read weights_only (the payload never runs)
                load_pickled_state_dict(path, cfg.model.allow_pickle)
            except PretrainedError as err:
                raise ConfigError(f"model.pretrained = '{path}': {err}") from None
        raise ConfigError(
            f"model.pretrained = '{path}': a single-file checkpoint; convert it once to a "
            f"diffusers folder with `difftrain convert-single-file {path} --config <local "
            "pipeline folder of the same family> --out DIR` (diffusers' from_single_file) and "
            "set model.pretrained = DIR (see README, Fine-tuning Stable Diffusion)"
        )
    try:
        check_pipeline_dir(path, pipeline_family(path).subfolders)
    except PretrainedError as err:
        raise ConfigError(f"model.pretrained = '{path}': {err}") from None
    return path


def pipeline_family(path: Path) -> Family:
    """The family of a pipeline folder (its model_index.json), or a ConfigError naming it."""
    try:
        return detect_family(path)
    except ValueError as err:
        raise ConfigError(f"model.pretrained = '{path}': {err}") from None


def scheduler_diffusion(path: Path) -> dict:
    """diffusion.* values equivalent to the pipeline's scheduler config (objective vp)."""
    file = path / "scheduler" / "scheduler_config.json"
    try:
        s = read_json(file)
    except PretrainedError as err:
        raise ConfigError(f"model.pretrained: {err}") from None
    if s.get("trained_betas") is not None:
        raise ConfigError(f"{file}: trained_betas (an explicit β list) is not supported")
    schedule = _BETA_SCHEDULES.get(s.get("beta_schedule", "linear"))
    prediction = _PREDICTIONS.get(s.get("prediction_type", "epsilon"))
    if schedule is None or prediction is None:
        raise ConfigError(
            f"{file}: beta_schedule {s.get('beta_schedule')!r} / prediction_type "
            f"{s.get('prediction_type')!r} not supported (allowed: {', '.join(_BETA_SCHEDULES)} "
            f"/ {', '.join(_PREDICTIONS)})"
        )
    out = {
        "objective": "vp",
        "prediction": prediction,
        "beta_schedule": schedule,
        "num_train_timesteps": int(s.get("num_train_timesteps", 1000)),
        "zero_terminal_snr": bool(s.get("rescale_betas_zero_snr", False)),
    }
    if schedule != "cosine":
        out["beta_start"] = float(s.get("beta_start", 1e-4))
        out["beta_end"] = float(s.get("beta_end", 0.02))
    return out


def _resolve_section(section, values: dict, where: str, fixed: tuple[str, ...] = ()):
    """`section` with `values` filled in; an explicitly set key in `fixed` must agree."""
    explicit = section.model_fields_set
    for key in fixed:
        mine = getattr(section, key)
        if key in explicit and mine != values[key]:
            raise ConfigError(
                f"{where}.{key} = {mine!r} disagrees with the pretrained pipeline "
                f"({values[key]!r}); remove {where}.{key}"
            )
    keep = {k: v for k, v in values.items() if k in fixed or k not in explicit}
    return type(section).model_validate({**section.model_dump(), **keep})


def resolve_pretrained(cfg: Config) -> Config:
    """The config with diffusion, latent and text sections filled from model.pretrained."""
    if cfg.model.pretrained is None:
        if cfg.finetune != FinetuneConfig():
            raise ConfigError(
                "the finetune section needs model.pretrained (a local Stable Diffusion "
                "pipeline folder); remove finetune or set model.pretrained"
            )
        return cfg
    if cfg.model.kind != "diffusion":
        raise ConfigError(
            "model.pretrained fine-tunes a diffusion model: set model.kind = diffusion"
        )
    path = pipeline_path(cfg)
    family = pipeline_family(path)
    if family.flow:
        from difftrain.pipeline.pretrained_flow import flow_diffusion, t5_length

        mapped = flow_diffusion(path, cfg.data.resolution)
        diffusion = _resolve_section(
            cfg.diffusion, mapped, "diffusion", ("objective", "flow_shift")
        )
    else:
        mapped = scheduler_diffusion(path)
        sigmas = vp_sigmas(make_alphas_cumprod(
            mapped["beta_schedule"], mapped["num_train_timesteps"], mapped.get("beta_start", 1e-4),
            mapped.get("beta_end", 0.02), mapped["zero_terminal_snr"]))  # fmt: skip
        # Sampling σ range: the pipeline's own training range (k-diffusion does the same for SD).
        mapped |= {"sigma_min": float(sigmas[0]), "sigma_max": float(sigmas[-1])}
        diffusion = _resolve_section(cfg.diffusion, mapped, "diffusion", tuple(mapped)[:5])
    if cfg.text.encoder == "scratch":
        raise ConfigError(
            "text.encoder = 'scratch' with model.pretrained: the pipeline brings its own text "
            "encoder; remove text.encoder"
        )
    if cfg.text.pooled:
        raise ConfigError(
            "text.pooled = true with model.pretrained: the pipeline's U-Net keeps its own "
            "architecture; remove text.pooled"
        )
    tok = read_json(path / "tokenizer" / "tokenizer_config.json") if (
        path / "tokenizer" / "tokenizer_config.json").is_file() else {}  # fmt: skip
    max_len = tok.get("model_max_length", 77)
    max_len = max_len if isinstance(max_len, int) and 3 <= max_len <= 512 else 77
    if family.t5:  # text.max_length counts the T5 tokens (each CLIP keeps its 77)
        max_len = t5_length(path, family)
    text = _resolve_section(
        cfg.text, {"encoder": "path", "path": path, "max_length": max_len}, "text",
        ("encoder", "path"),
    )  # fmt: skip
    latent = cfg.latent
    if latent.autoencoder is None:  # the pipeline's vae/ (a different one may be set explicitly)
        latent = latent.model_copy(update={"autoencoder": path})
    train = cfg.train
    if "posthoc_ema_sigma_rels" not in train.model_fields_set:
        # Each post-hoc EMA profile is a full float32 copy of the model (+ snapshots on disk):
        # off unless asked for when fine-tuning a pretrained pipeline.
        train = train.model_copy(update={"posthoc_ema_sigma_rels": []})
    update = {"diffusion": diffusion, "text": text, "latent": latent, "train": train}
    if family.flow and "schedule" not in cfg.sample.model_fields_set:
        # The pipeline's own sampling schedule: uniform in t, shifted (FlowMatchEuler).
        update["sample"] = cfg.sample.model_copy(update={"schedule": "uniform"})
    return cfg.model_copy(update=update)


def _check_common(cfg: Config) -> None:
    """Checks every family shares: a resolved config, no preset keys, DreamBooth drift."""
    if cfg.text.encoder != "path":
        raise ConfigError("model.pretrained: the config was not resolved (text.encoder)")
    explicit = cfg.model.model_fields_set & {"preset", "block_out_channels", "layers_per_block",
                                             "attention_levels"}  # fmt: skip
    if any(getattr(cfg.model, k) != type(cfg.model).model_fields[k].default for k in explicit):
        raise ConfigError(
            f"model.{sorted(explicit)[0]} is not used with model.pretrained (the pipeline's "
            "denoiser sets the architecture); remove it"
        )
    db = cfg.finetune.dreambooth
    if db is not None and db.class_prompt is None and db.drift_images:
        raise ConfigError(
            "finetune.dreambooth.drift_images > 0 needs finetune.dreambooth.class_prompt "
            "(drift is measured on class prompts); set one or drift_images = 0"
        )


def check_pretrained(cfg: Config) -> int:
    """Checks of a model.pretrained run; returns the U-Net's downsampling factor."""
    path = pipeline_path(cfg)
    family = pipeline_family(path)
    _check_common(cfg)
    if family.flow:
        from difftrain.pipeline.pretrained_flow import check_flow

        return check_flow(cfg, path, family)
    if cfg.diffusion.objective != "vp":
        raise ConfigError("model.pretrained runs use diffusion.objective = 'vp' (its scheduler)")
    try:
        unet = read_json(path / "unet" / "config.json")
        encs = [read_json(path / s / "config.json") for s in family.text_encoders]
        vae = read_json(path / "vae" / "config.json")
        levels = len(unet["block_out_channels"])
        in_ch, cross = int(unet["in_channels"]), unet["cross_attention_dim"]
        width, latent_ch = sum(int(e["hidden_size"]) for e in encs), int(vae["latent_channels"])
    except (PretrainedError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"model.pretrained = '{path}': unreadable config ({err})") from None
    if family.name == "sdxl" and cfg.finetune.train_text_encoder:
        raise ConfigError(
            "finetune.train_text_encoder with an SDXL pipeline: not supported yet (its two "
            "text encoders stay frozen); set finetune.train_text_encoder = false"
        )
    if family.name == "sdxl" and unet.get("addition_embed_type") != "text_time":
        raise ConfigError(f"model.pretrained = '{path}': an SDXL unet/ needs addition_embed_type "
                          "'text_time' (pooled text + micro-conditioning)")  # fmt: skip
    if family.name == "sd" and (unet.get("addition_embed_type") or isinstance(cross, list)):
        raise ConfigError(
            f"model.pretrained = '{path}': an SDXL-style U-Net (two text encoders, micro-"
            "conditioning) in a folder whose model_index.json does not say "
            "StableDiffusionXLPipeline; save it with StableDiffusionXLPipeline.save_pretrained"
        )
    if cross != width or in_ch != latent_ch:
        raise ConfigError(
            f"model.pretrained = '{path}': unet cross_attention_dim {cross} / in_channels "
            f"{in_ch} do not match text_encoder hidden_size {width} / vae latent_channels {latent_ch}"
        )
    return 2 ** (levels - 1)


def build_pretrained_backbone(cfg: Config) -> nn.Module:
    """The pipeline's U-Net + CLIP text encoder, frozen where finetune says, LoRA where asked."""
    from difftrain.pipeline.text import build_text_encoder

    ft, path = cfg.finetune, pipeline_path(cfg)
    family = pipeline_family(path)
    if family.flow:
        from difftrain.pipeline.pretrained_flow import build_flow_backbone

        return build_flow_backbone(cfg, path, family, _multi_text(cfg, path, family))
    try:
        unet = load_unet(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.pretrained = '{path}': cannot load unet/ ({err})") from None
    text = build_text_encoder(cfg) if family.name == "sd" else _multi_text(cfg, path, family)
    lora = ft.lora
    try:
        if ft.method == "lora":
            add_lora(unet, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
        else:
            unet.requires_grad_(True)
        if ft.train_text_encoder:
            text.frozen = False
            text.model.train()
            if ft.method == "lora":
                add_lora(text.model, lora.rank, lora.alpha, lora.dropout, lora.text_target_modules)
            else:
                text.model.requires_grad_(True)
    except PretrainedError as err:
        raise ConfigError(f"finetune.lora: {err}") from None
    if ft.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if ft.train_text_encoder:
            enable = getattr(text.model, "activation_checkpointing_enable", None)  # transformers 5
            (enable or text.model.gradient_checkpointing_enable)()
    if family.name == "sdxl":
        from difftrain.pipeline.pretrained_flow import vae_downsample

        return SDXLBackbone(unet, text, vae_downsample(path), ft.cache_text_embeddings)
    return PretrainedUNetBackbone(unet, text, cache_text=ft.cache_text_embeddings)


def _multi_text(cfg: Config, path: Path, family: Family) -> nn.Module:
    """The frozen text encoders of a several-encoder pipeline (SDXL, SD3, FLUX)."""
    from difftrain.models.pretrained_text import MultiTextEncoder, load_text_encoders
    from difftrain.pipeline.text import open_tokenizer

    tok = open_tokenizer(cfg)
    try:
        encoders = load_text_encoders(path, family)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.pretrained = '{path}': cannot load its text encoders ({err})"
        ) from None
    return MultiTextEncoder(encoders, tok.lengths, tok.encode([""]), family.name)


def write_run_lora(cfg: Config, backbone: nn.Module, out_dir: Path) -> Path:
    """The run's adapters as the LoRA file its family's pipeline loads (`load_lora_weights`)."""
    family = pipeline_family(Path(cfg.model.pretrained))
    if family.flow:  # diffusers' SD3/FLUX scripts save peft's key names as they are
        layers = {"transformer_lora_layers": backbone.transformer}
        return write_lora_file(family.pipeline, layers, out_dir, convert=False)
    layers = {"unet_lora_layers": backbone.unet}
    if cfg.finetune.train_text_encoder:
        layers |= lora_text_layers(backbone.text)
    return write_lora_file(family.pipeline, layers, out_dir)


def lora_text_layers(text: nn.Module) -> dict[str, nn.Module]:
    """`text_encoder_lora_layers` (and `text_encoder_2_…` for SDXL) of a trained text encoder."""
    models = list(text.models) if hasattr(text, "models") else [text.model]
    names = ["text_encoder_lora_layers", "text_encoder_2_lora_layers"]
    return dict(zip(names, models, strict=False))
