"""difftrain's byte and BPE tokenizers as `tokenizers` objects that frame ids the same way:
`[bos] tokens [eos] pad…` at max_length (truncating the tokens). Used by the diffusers export
(wrapped as a transformers tokenizer) and the ONNX export (read by the torch-free sampler)."""

from __future__ import annotations

from difftrain.config import ConfigError
from difftrain.models.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    BPETokenizer,
    ByteTokenizer,
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table, the alphabet of the ByteLevel pre-tokenizer."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _byte_tokenizer(tok: ByteTokenizer):
    """ByteTokenizer as a `tokenizers` model: each UTF-8 byte b is the token b + 3."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: b + len(SPECIAL_TOKENS) for b, c in _bytes_to_unicode().items()})
    out = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    if tok.lowercase:
        out.normalizer = normalizers.Lowercase()
    out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    out.decoder = decoders.ByteLevel()
    return out


def framed_tokenizer(tok, pad_and_truncate: bool = False):
    """A `tokenizers.Tokenizer` adding [bos]/[eos]; optionally padding/truncating to max_length."""
    from tokenizers import Tokenizer, processors

    if isinstance(tok, BPETokenizer):
        inner = Tokenizer.from_str(tok.tokenizer.to_str())  # a copy: the run's stays unchanged
    elif isinstance(tok, ByteTokenizer):
        inner = _byte_tokenizer(tok)
    else:
        raise ConfigError(f"{type(tok).__name__}: no `tokenizers` equivalent; cannot export")
    pad, bos, eos = SPECIAL_TOKENS
    assert inner.token_to_id(pad) == PAD_ID
    inner.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, BOS_ID), (eos, EOS_ID)]
    )
    if pad_and_truncate:
        inner.enable_truncation(max_length=tok.max_length)  # counts the added [bos]/[eos]
        inner.enable_padding(pad_id=PAD_ID, pad_token=pad, length=tok.max_length)
    return inner
