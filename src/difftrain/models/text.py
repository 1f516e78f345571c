"""Text conditioning: tokenizers that need no download and a CLIP text encoder (Radford et al. 2021).

Three ways to turn a caption into token ids (B×L int64, fixed length L = max_length):

- `ByteTokenizer`: UTF-8 bytes. Needs no file at all; any text is representable.
- `BPETokenizer`: byte-level BPE trained with the `tokenizers` library on the training captions
  and saved as JSON in the run directory (`text/tokenizer.json`). Whole words such as "cat" become
  single tokens, which a small encoder trained from scratch learns far more easily than bytes.
- `PretrainedTokenizer`: the tokenizer files of a local pretrained model directory.

The byte and BPE tokenizers share the special ids 0 = pad, 1 = begin, 2 = end. Every caption is
`[bos] tokens… [eos] pad…`; the empty prompt "" (`[bos, eos, pad…]`) is the null condition used
for caption dropout and classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


def _frame(tokens: list[list[int]], max_length: int) -> torch.Tensor:
    """[bos] + tokens (truncated) + [eos], padded to max_length: B×L int64."""
    out = torch.full((len(tokens), max_length), PAD_ID, dtype=torch.long)
    for i, t in enumerate(tokens):
        row = [BOS_ID, *t[: max_length - 2], EOS_ID]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids: byte b has id b + 3 (vocabulary 259)."""

    vocab_size = 256 + len(SPECIAL_TOKENS)

    def __init__(self, max_length: int, lowercase: bool = True):
        self.max_length, self.lowercase = max_length, lowercase

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids B×max_length of each text."""
        norm = [t.lower() if self.lowercase else t for t in texts]
        return _frame([[b + 3 for b in t.encode("utf-8")] for t in norm], self.max_length)


class BPETokenizer:
    """Byte-level BPE (`tokenizers`), trained on captions; round-trips through one JSON file."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(
        cls, captions: list[str], vocab_size: int, max_length: int, lowercase: bool = True
    ) -> BPETokenizer:
        """Learn merges from `captions` (deterministic for the same captions and settings)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),  # ids 0, 1, 2 in this order
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text stays encodable
            show_progress=False,
        )
        tok.train_from_iterator(captions, trainer)
        return cls(tok, max_length)

    @classmethod
    def load(cls, path: Path, max_length: int, vocab_size: int) -> BPETokenizer:
        """Read a tokenizer JSON written by `save`; a file that does not fit is a ValueError."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(Path(path).read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises a plain Exception on a malformed file
            raise ValueError(f"{path}: not a readable tokenizer JSON ({err})") from None
        specials = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if specials != [PAD_ID, BOS_ID, EOS_ID] or tok.get_vocab_size() > vocab_size:
            raise ValueError(
                f"{path}: special tokens {specials} (need [0, 1, 2]) or vocabulary "
                f"{tok.get_vocab_size()} > text.vocab_size = {vocab_size}; not this run's tokenizer"
            )
        return cls(tok, max_length)

    def save(self, path: Path) -> None:
        """Write the tokenizer as one JSON file (parents created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.tokenizer.to_str(), encoding="utf-8")

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids B×max_length of each text."""
        return _frame([e.ids for e in self.tokenizer.encode_batch(texts)], self.max_length)


class PretrainedTokenizer:
    """The tokenizer of a local pretrained model directory, padded/truncated to max_length."""

    def __init__(self, path: Path, max_length: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.max_length = max_length
        self.vocab_size = len(self.tokenizer)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids B×max_length of each text."""
        out = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return out.input_ids.long()


def scratch_text_model(vocab_size: int, width: int, layers: int, heads: int, max_length: int):
    """A randomly initialised `transformers` CLIPTextModel, trained jointly with the denoiser."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return CLIPTextModel(config)


def pretrained_text_model(path: Path):
    """A CLIPTextModel from a local diffusers/transformers directory (safetensors only)."""
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(str(path), use_safetensors=True, local_files_only=True)


class TextEncoder(nn.Module):
    """Token ids B×L → hidden states B×L×width, the keys/values of the backbone's cross-attention.

    A frozen encoder (a pretrained one) has requires_grad False and always runs without grad.
    `null_ids` (the ids of the empty prompt, 1×L) stand in when the condition is None.
    """

    def __init__(self, model: nn.Module, null_ids: torch.Tensor, frozen: bool = False):
        super().__init__()
        self.model, self.frozen = model, frozen
        self.width = int(model.config.hidden_size)
        self.heads = int(model.config.num_attention_heads)
        self.max_length = int(null_ids.shape[-1])
        self.register_buffer("null_ids", null_ids.reshape(1, -1).long(), persistent=False)
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def ids(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The token ids to encode: `cond` (B×L) checked, or the empty prompt when None."""
        if cond is None:
            return self.null_ids.expand(batch, -1)
        if cond.dim() != 2 or cond.shape != (batch, self.max_length) or cond.is_floating_point():
            raise ValueError(
                f"a text-conditioned model takes token ids of shape ({batch}, {self.max_length}); "
                f"got {tuple(cond.shape)} {cond.dtype} (class labels? use a prompt instead)"
            )
        return cond

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        ids = self.ids(cond, batch)
        if self.frozen:
            with torch.no_grad():
                return self.model(input_ids=ids).last_hidden_state
        return self.model(input_ids=ids).last_hidden_state
