"""A run's text conditioning: its tokenizer (byte, BPE in the run directory, or pretrained) and
text encoder, prompt encoding, and caption dropout for classifier-free guidance."""

from __future__ import annotations

from pathlib import Path

import torch

from difftrain.config import Config, ConfigError
from difftrain.diffusion.loss import rand_on
from difftrain.models.text import (
    BPETokenizer,
    ByteTokenizer,
    PretrainedTokenizer,
    TextEncoder,
    pretrained_text_model,
    scratch_text_model,
)

TOKENIZER_FILE = Path("text") / "tokenizer.json"  # inside the run directory (BPE only)


def uses_text(cfg: Config) -> bool:
    """Whether the model is conditioned on captions/prompts."""
    return cfg.text.encoder != "none"


def _check_path(cfg: Config, part: str = "text_encoder") -> Path:
    path = Path(cfg.text.path)
    if any((path / part / f).is_file() for f in ("config.json", "tokenizer_config.json")):
        return path / part  # a diffusers pipeline folder: text_encoder/ and tokenizer/
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"text.path = '{path}': no config.json there; point it at a local directory saved "
            "with CLIPTextModel.save_pretrained (safetensors) plus its tokenizer files"
        )
    return path


def open_tokenizer(cfg: Config, run_dir: Path | None = None, captions: list[str] | None = None):
    """The run's tokenizer.

    BPE: read from `<run_dir>/text/tokenizer.json` when it exists (resume, sampling), else
    trained on `captions` (a fresh run; `save_tokenizer` writes it once the run starts).
    """
    t = cfg.text
    if t.encoder == "path" and (Path(t.path) / "tokenizer_2").is_dir():  # SDXL, SD3, FLUX
        from difftrain.models.families import detect_family
        from difftrain.models.pretrained_text import open_multi_tokenizer

        try:
            return open_multi_tokenizer(Path(t.path), detect_family(Path(t.path)), t.max_length)
        except (OSError, ValueError) as err:
            raise ConfigError(f"text.path = '{t.path}': no usable tokenizers ({err})") from None
    if t.encoder == "path":
        try:
            return PretrainedTokenizer(_check_path(cfg, "tokenizer"), t.max_length)
        except (OSError, ValueError) as err:
            raise ConfigError(f"text.path = '{t.path}': no usable tokenizer ({err})") from None
    if t.tokenizer == "byte":
        return ByteTokenizer(t.max_length, t.lowercase)
    file = None if run_dir is None else Path(run_dir) / TOKENIZER_FILE
    if file is not None and file.is_file():
        try:
            return BPETokenizer.load(file, t.max_length, t.vocab_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if captions is None:
        where = f"{file}" if file is not None else "the run directory"
        raise ConfigError(
            f"text.tokenizer = 'bpe': no trained tokenizer in {where} and no captions to train "
            "one on; use text.tokenizer = 'byte' or give the data captions"
        )
    if not any(c.strip() for c in captions):
        raise ConfigError(
            "text conditioning needs captions, but every training caption is empty; add "
            "metadata.jsonl / .txt captions or set data.caption_policy = 'filename'"
        )
    return BPETokenizer.train(captions, t.vocab_size, t.max_length, t.lowercase)


def save_tokenizer(tokenizer, run_dir: Path) -> None:
    """Write a trained BPE tokenizer into the run directory (other kinds need no file)."""
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(Path(run_dir) / TOKENIZER_FILE)


def build_text_encoder(cfg: Config) -> TextEncoder:
    """A CLIP text encoder: random and trainable (scratch) or pretrained and frozen (path).

    Built from the config alone: the null prompt of the byte and BPE tokenizers is the same
    `[bos, eos, pad…]`, and a pretrained tokenizer lives in text.path.
    """
    t = cfg.text
    if t.encoder == "path":
        null_ids = open_tokenizer(cfg).encode([""])
        try:
            model = pretrained_text_model(_check_path(cfg))
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"text.path = '{t.path}': no usable CLIP text model ({err})"
            ) from None
        if model.config.max_position_embeddings < t.max_length:
            raise ConfigError(
                f"text.max_length = {t.max_length} exceeds the encoder's "
                f"{model.config.max_position_embeddings} positions; lower text.max_length"
            )
        return TextEncoder(model, null_ids, frozen=True)
    # BPE vocabularies may come out smaller than asked; the embedding table has the full size
    # so that the weight shapes depend on the config alone (a run loads without its captions).
    vocab = t.vocab_size if t.tokenizer == "bpe" else ByteTokenizer.vocab_size
    model = scratch_text_model(vocab, t.width, t.layers, t.heads, t.max_length)
    return TextEncoder(model, ByteTokenizer(t.max_length).encode([""]), frozen=False)


def encode_prompts(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids N×L of each prompt ("" is the null condition)."""
    return tokenizer.encode([str(p) for p in prompts])


def drop_captions(captions: list[str], rate: float, gen: torch.Generator) -> list[str]:
    """Each caption replaced by "" with probability `rate` (one uniform draw per caption)."""
    drop = rand_on((len(captions),), gen, "cpu") < rate  # sliced: same for any process count
    return ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]


MAX_TAGS = 32  # uniform draws per caption for tag dropout (later tags are always kept)


def drop_tags(captions: list[str], rate: float, gen: torch.Generator, sep: str = ",") -> list[str]:
    """Each `sep`-separated tag of a caption dropped with probability `rate`, at least one kept.

    kohya's caption_tag_dropout: "slice of pizza, pizza" also trains "pizza" and "slice of
    pizza" alone, so short prompts meet captions they resemble. A fixed MAX_TAGS draws per
    caption keep the generator's use independent of the captions (exact resume)."""
    if rate <= 0:
        return list(captions)
    draws = rand_on((len(captions), MAX_TAGS), gen, "cpu").tolist()
    out = []
    for caption, u in zip(captions, draws, strict=True):
        tags = [t.strip() for t in caption.split(sep) if t.strip()]
        if len(tags) < 2:
            out.append(caption)
            continue
        drawn = tags[:MAX_TAGS]
        kept = [t for t, r in zip(drawn, u, strict=False) if r >= rate]
        if not kept:  # all dropped: keep the one whose draw was highest
            kept = [drawn[max(range(len(drawn)), key=u.__getitem__)]]
        out.append(f"{sep} ".join(kept + tags[MAX_TAGS:]))
    return out


def prompt_rows(prompts: list[str], num: int) -> list[str]:
    """Contiguous blocks of prompts: with num = 8 and 2 prompts, images 0-3 get the first."""
    if not prompts:
        raise ConfigError("no prompts given; pass --prompt (repeatable) or --prompt-file")
    return [prompts[i * len(prompts) // num] for i in range(num)]


class TextConditioning:
    """A run's tokenizer with the caption dropout rate: captions/prompts → token id rows."""

    def __init__(self, cfg: Config, tokenizer):
        self.tokenizer, self.dropout = tokenizer, cfg.text.caption_dropout
        self.tag_dropout = cfg.text.tag_dropout
        self.max_length = cfg.text.max_length

    @classmethod
    def open(cls, cfg: Config, run_dir: Path | None = None, captions: list[str] | None = None):
        """The run's text conditioning, or None for a model without text."""
        return cls(cfg, open_tokenizer(cfg, run_dir, captions)) if uses_text(cfg) else None

    def null(self) -> torch.Tensor:
        """Token ids 1×L of the empty prompt: the null condition of guidance."""
        return self.tokenizer.encode([""])

    def ids(self, prompts: list[str]) -> torch.Tensor:
        """Token ids N×L of each prompt."""
        return encode_prompts(self.tokenizer, prompts)

    def training_ids(self, captions: list[str], gen: torch.Generator) -> torch.Tensor:
        """Token ids of a micro-batch's captions: tags dropped (text.tag_dropout), then whole
        captions dropped to "" with the caption dropout rate."""
        captions = drop_tags(captions, self.tag_dropout, gen)
        return self.ids(drop_captions(captions, self.dropout, gen))

    def request(
        self, prompts: list[str], negative: str | None, num: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond rows num×L for prompts in contiguous blocks, null row 1×L = negative or "")."""
        return self.ids(prompt_rows(prompts, num)), self.ids([negative or ""])
