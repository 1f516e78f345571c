"""Explanations of a trained denoiser D(x, σ, c): what it predicts, what the condition changes,
where each prompt token attends, and which noise levels are still learning.

- Trajectory at chosen σ: a sample x0 of the run (the one generation request), x_σ = x0 + σ·n
  with seeded n, the prediction D(x_σ, σ, c) and the residual x_σ − D(x_σ, σ, c) (= σ times the
  predicted noise).
- Conditional difference: |D(x_σ, σ, c) − D(x_σ, σ, ∅)| averaged over channels, per σ, where ∅ is
  the null condition (the null class, or the empty prompt). An unconditional model ignores its
  condition, so the map is exactly zero there.
- DAAM (Tang et al. 2022, "What the DAAM"): the cross-attention probabilities of every
  cross-attention layer, recorded by a diffusers attention processor during a guidance-1
  sampling run, averaged over heads, upsampled (bilinear) to the denoiser's input size and
  averaged over layers and denoiser calls. The result has one map per token position (K×H×W);
  because attention is a softmax over tokens and the averaging and bilinear upsampling are
  convex, the K maps sum to 1 at every pixel. Figures show the prompt's own tokens, each scaled
  to its maximum.
- Loss by noise level over training: the run's `val/loss_sigma_*` rows of metrics.jsonl, and the
  relative change between the last two validations per σ.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from difftrain.config import ConfigError
from difftrain.pipeline.request import GenerationRequest, plan_request, run_request_tensors

DEFAULT_SIGMAS = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Explanation:
    sigmas: list[float]
    x0: torch.Tensor  # 1×C×H×W: the sample explained (model space)
    noisy: torch.Tensor  # S×C×H×W: x0 + σ·n
    predicted: torch.Tensor  # S×C×H×W: D(x_σ, σ, c)
    residual: torch.Tensor  # S×C×H×W: x_σ − D(x_σ, σ, c)
    cond_diff: torch.Tensor  # S×H×W: mean over channels of |D(x_σ,σ,c) − D(x_σ,σ,∅)|
    daam: torch.Tensor | None = None  # K×H×W per token position (text models)
    tokens: list[str] | None = None  # the K token strings


def conditions(run, class_label: int | None, prompt: str | None):
    """(cond, null) rows of one example: class label vs null class, prompt vs "", or None."""
    if run.text is not None:
        ids, null = run.encode_prompts([prompt or ""], None, 1)
        return ids, null
    if prompt is not None:
        raise ConfigError("--prompt: this model is not text-conditioned; drop the prompt")
    k = run.num_classes
    if k is None:
        if class_label is not None:
            raise ConfigError("--class-label: this model is unconditional; drop it")
        return None, None
    label = 0 if class_label is None else class_label
    if not 0 <= label < k:
        raise ConfigError(f"--class-label {label}: the model has classes 0..{k - 1}")
    return torch.tensor([label]), torch.tensor([k])


class RecordingProcessor(AttnProcessor):
    """diffusers' plain attention, keeping each call's probabilities (B·heads × Q × K)."""

    def __init__(self, store: list):
        super().__init__()
        self.store = store

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, *args, **kwargs):  # fmt: skip
        shape = tuple(hidden_states.shape)
        original = attn.get_attention_scores

        def record(query, key, mask=None):
            probs = original(query, key, mask)
            self.store.append((probs.detach().float(), attn.heads, shape))
            return probs

        attn.get_attention_scores = record  # an instance attribute shadows the method
        try:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb
            )
        finally:
            del attn.get_attention_scores


@contextmanager
def record_cross_attention(model: torch.nn.Module):
    """Install RecordingProcessor on every cross-attention layer (diffusers' `attn2`); restore."""
    layers = [
        m for n, m in model.named_modules() if isinstance(m, Attention) and n.endswith("attn2")
    ]
    if not layers:
        raise ConfigError("this model has no cross-attention layers to explain per token")
    store: list = []
    old = [m.processor for m in layers]
    for m in layers:
        m.set_processor(RecordingProcessor(store))
    try:
        yield store
    finally:
        for m, p in zip(layers, old, strict=True):
            m.set_processor(p)


def aggregate_attention(store: list, size: tuple[int, int]) -> torch.Tensor:
    """Recorded probabilities → K×H×W maps, averaged over heads, layers and calls (batch row 0)."""
    h_in, w_in = size
    total, n = None, 0
    for probs, heads, shape in store:
        q, k = probs.shape[-2:]
        p = probs.reshape(-1, heads, q, k)[0].mean(0)  # Q×K, first example
        if len(shape) == 4:
            h, w = shape[2], shape[3]
        else:  # B×Q×C: the layer's grid keeps the input's aspect ratio
            f = math.sqrt(h_in * w_in / q)
            h, w = round(h_in / f), round(w_in / f)
        grid = p.T.reshape(1, k, h, w)
        up = torch.nn.functional.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        total = up[0] if total is None else total + up[0]
        n += 1
    if total is None:
        raise ConfigError("no cross-attention was recorded")
    return total / n


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """A readable string for each token id (byte, BPE or pretrained tokenizer)."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "id_to_token"):
        return [str(inner.id_to_token(i)) for i in ids]
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):
        return [str(t) for t in inner.convert_ids_to_tokens(ids)]
    return ["<pad>" if i == 0 else "<bos>" if i == 1 else "<eos>" if i == 2
            else bytes([i - 3]).decode("latin-1") for i in ids]  # fmt: skip


@torch.no_grad()
def explain(run, *, class_label: int | None = None, prompt: str | None = None,
            sigmas=DEFAULT_SIGMAS, seed: int = 0, steps: int | None = None,
            device="cpu") -> Explanation:  # fmt: skip
    """Trajectory, conditional difference and (text models) DAAM maps of one seeded sample."""
    if run.config.data.source == "sequence":
        raise ConfigError("explain draws image maps; a sequence run is evaluated with "
                          "scripts/sequence_demo.py evaluate")  # fmt: skip
    if any(not 0 < s <= 1e4 for s in sigmas):
        raise ConfigError(f"--sigma {list(sigmas)}: each must lie in (0, 10000]")
    cond, null = conditions(run, class_label, prompt)
    req = GenerationRequest(num=1, seed=seed, steps=steps, class_label=class_label,
                            prompt=prompt if run.text is not None else None, guidance=1.0)  # fmt: skip
    plan = plan_request(run, req)
    D = run.denoiser
    record = record_cross_attention(D) if run.text is not None else None
    if record is not None:
        with record as store:
            x0 = torch.cat(list(run_request_tensors(run, plan))).to(device)
    else:
        store, x0 = None, torch.cat(list(run_request_tensors(run, plan))).to(device)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape[1:], generator=gen).to(device)
    s = torch.tensor(list(sigmas), dtype=torch.float32, device=device)
    noisy = x0 + s.view(-1, 1, 1, 1) * noise  # S×C×H×W, the same noise at every σ
    rows = lambda c: None if c is None else c.to(device).expand(len(s), *c.shape[1:])  # noqa: E731
    pred = D(noisy, s, rows(cond)).float()
    base = D(noisy, s, rows(null)).float()
    out = Explanation(list(map(float, sigmas)), x0.cpu(), noisy.cpu(), pred.cpu(),
                      (noisy - pred).cpu(), (pred - base).abs().mean(1).cpu())  # fmt: skip
    if store is not None:
        out.daam = aggregate_attention(store, tuple(x0.shape[-2:]))
        out.tokens = token_strings(run.text.tokenizer, cond[0].tolist())
    return out


def prompt_positions(tokens: list[str], ids: list[int] | None = None) -> list[int]:
    """Token positions worth showing: not padding, begin or end markers."""
    skip = {"<pad>", "<bos>", "<eos>", "<|startoftext|>", "<|endoftext|>"}
    return [i for i, t in enumerate(tokens) if t not in skip]


def sigma_learning(rows: list[dict]) -> list[dict]:
    """Per σ: the last validation loss and its relative change since the previous validation."""
    keys = sorted({k for r in rows for k in r if k.startswith("val/loss_sigma_")},
                  key=lambda k: float(k.rsplit("_", 1)[1]))  # fmt: skip
    out = []
    for k in keys:
        vals = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)]
        if not vals:
            continue
        last = vals[-1][1]
        prev = vals[-2][1] if len(vals) > 1 else None
        change = None if prev in (None, 0) else (last - prev) / abs(prev)
        out.append({"sigma": float(k.rsplit("_", 1)[1]), "step": vals[-1][0], "loss": last,
                    "relative_change": change})  # fmt: skip
    return out
