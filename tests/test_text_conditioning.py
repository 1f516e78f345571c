"""Text conditioning and DiT: tokenizers, text encoders owned by the backbone, caption dropout,
guidance with a negative prompt, presets and their config errors."""

from __future__ import annotations

import pytest
import torch

from difftrain.config import Config, ConfigError
from difftrain.models.text import BOS_ID, EOS_ID, PAD_ID, BPETokenizer, ByteTokenizer
from difftrain.pipeline.build import build_denoiser, check_config
from difftrain.pipeline.text import (
    TextConditioning,
    drop_captions,
    drop_tags,
    open_tokenizer,
    prompt_rows,
)
from difftrain.samplers import CFGDenoiser

torch.set_num_threads(1)

CAPTIONS = ["grinning face", "cat face", "red heart", "pizza", "cat", "smiling face with hearts"]


def cfg_for(preset: str = "unet-cond-tiny", **text) -> Config:
    return Config(
        data={"source": "digits", "resolution": 8, "channels": 1},
        model={"preset": preset},
        text={"encoder": "scratch", "tokenizer": "byte", "max_length": 12, "width": 32,
              "heads": 2, "layers": 1, **text},
    )  # fmt: skip


def test_byte_tokenizer_frames_truncates_and_lowercases():
    tok = ByteTokenizer(max_length=6)
    ids = tok.encode(["Ab", "", "abcdefgh"])
    assert ids.dtype == torch.long and ids.shape == (3, 6)
    assert ids[0].tolist() == [BOS_ID, ord("a") + 3, ord("b") + 3, EOS_ID, PAD_ID, PAD_ID]
    assert ids[1].tolist() == [BOS_ID, EOS_ID] + [PAD_ID] * 4  # the null prompt
    assert ids[2].tolist()[-1] == EOS_ID  # truncated, still closed
    assert torch.equal(tok.encode(["AB"]), tok.encode(["ab"]))


def test_bpe_tokenizer_round_trips_through_json_and_rejects_bad_files(tmp_path):
    tok = BPETokenizer.train(CAPTIONS * 5, vocab_size=300, max_length=10)
    path = tmp_path / "tok.json"
    tok.save(path)
    again = BPETokenizer.load(path, max_length=10, vocab_size=300)
    assert torch.equal(tok.encode(CAPTIONS), again.encode(CAPTIONS))
    assert torch.equal(tok.encode([""]), ByteTokenizer(10).encode([""]))  # same null prompt
    # whole words become few tokens: "cat face" is shorter than its bytes
    n_tokens = int((tok.encode(["cat face"]) != PAD_ID).sum())
    assert n_tokens < len("cat face") + 2
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable tokenizer"):
        BPETokenizer.load(path, 10, 300)
    with pytest.raises(ValueError, match="not this run's tokenizer"):
        tok.save(path)
        BPETokenizer.load(path, 10, vocab_size=tok.vocab_size - 1)


def test_bpe_needs_captions_or_a_saved_file(tmp_path):
    cfg = cfg_for(tokenizer="bpe", vocab_size=300)
    with pytest.raises(ConfigError, match="no trained tokenizer"):
        open_tokenizer(cfg, tmp_path)
    with pytest.raises(ConfigError, match="every training caption is empty"):
        open_tokenizer(cfg, tmp_path, ["", " "])


def test_text_changes_the_denoiser_and_none_is_the_empty_prompt():
    torch.manual_seed(0)
    cfg = cfg_for()
    check_config(cfg)
    den = build_denoiser(cfg, None).eval()
    text = TextConditioning.open(cfg)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    a = den(x, sigma, text.ids(["cat face", "cat face"]))
    b = den(x, sigma, text.ids(["red heart", "red heart"]))
    assert (a - b).abs().max() > 1e-4  # the prompt reaches the output through cross-attention
    null = den(x, sigma, text.ids(["", ""]))
    assert torch.allclose(den(x, sigma, None), null)  # no condition = the empty prompt
    with pytest.raises(ValueError, match="token ids of shape"):
        den(x, sigma, torch.tensor([1, 2]))  # class labels are not a prompt


@pytest.mark.parametrize("pooled", [False, True])
def test_pooled_text_reaches_the_unet_without_cross_attention(pooled):
    """text.pooled adds the attention-pooled prompt to the timestep embedding: with every
    cross-attention output zeroed, the prompt still changes the output only when pooled."""
    torch.manual_seed(0)
    cfg = cfg_for(pooled=pooled)
    check_config(cfg)
    den = build_denoiser(cfg, None).eval()
    for name, module in den.backbone.unet.named_modules():
        if name.endswith("attn2.to_out.0"):  # the cross-attention's output projection
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    text = TextConditioning.open(cfg)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    a = den(x, sigma, text.ids(["cat face"] * 2))
    b = den(x, sigma, text.ids(["red heart"] * 2))
    assert ((a - b).abs().max() > 1e-4) == pooled


def test_pooled_text_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="text.pooled = true: model.preset 'dit-tiny'"):
        check_config(cfg_for("dit-tiny", pooled=True))
    with pytest.raises(ConfigError, match="text.pooled = true, but the model reads no text"):
        check_config(cfg_for("unet-tiny", encoder="none", pooled=True))


def test_text_gradients_reach_the_encoder_which_is_part_of_the_model():
    torch.manual_seed(0)
    cfg = cfg_for()
    den = build_denoiser(cfg, None)
    names = [n for n, _ in den.named_parameters()]
    assert any(".text.model." in n for n in names)  # checkpoints and EMA include it
    ids = TextConditioning.open(cfg).ids(["cat face"] * 2)
    den(torch.randn(2, 1, 8, 8), 1.0, ids).square().mean().backward()
    emb = den.backbone.text.model.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_caption_dropout_rate_is_honoured():
    gen = torch.Generator().manual_seed(0)
    caps = drop_captions(["cat"] * 20000, 0.3, gen)
    assert abs(caps.count("") / len(caps) - 0.3) < 0.015
    assert "" not in drop_captions(["cat"] * 1000, 0.0, gen)
    # same generator state, same drops: the step's randomness is reproducible on resume
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert drop_captions(CAPTIONS, 0.5, g1) == drop_captions(CAPTIONS, 0.5, g2)
    ids = TextConditioning(cfg_for(caption_dropout=0.999), ByteTokenizer(12)).training_ids(
        ["cat"] * 50, torch.Generator().manual_seed(1)
    )
    assert torch.equal(ids, ByteTokenizer(12).encode([""] * 50))


def test_tag_dropout_keeps_at_least_one_tag_and_is_reproducible():
    caps = ["slice of pizza, pizza", "cat face, cat, kitty", "ghost", ""] * 2000
    out = drop_tags(caps, 0.5, torch.Generator().manual_seed(0))
    assert out[2::4] == ["ghost"] * 2000 and out[3::4] == [""] * 2000  # one tag: untouched
    pizza = out[0::4]
    assert set(pizza) == {"slice of pizza, pizza", "slice of pizza", "pizza"}  # never empty
    # P(only "pizza") = P(first dropped) × P(second kept) + P(both dropped) × 1/2 = 0.375
    assert abs(pizza.count("pizza") / len(pizza) - 0.375) < 0.03
    cat = out[1::4]
    assert all(c and set(c.split(", ")) <= {"cat face", "cat", "kitty"} for c in cat)
    assert all(
        c.split(", ") == sorted(c.split(", "), key=["cat face", "cat", "kitty"].index) for c in cat
    )
    assert drop_tags(caps, 0.0, torch.Generator().manual_seed(0)) == caps
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert drop_tags(caps[:8], 0.5, g1) == drop_tags(caps[:8], 0.5, g2)
    # the generator advances by the same amount whatever the captions say (exact resume)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drop_tags(["a, b"] * 3, 0.5, g1), drop_tags(["x"] * 3, 0.5, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    # through the conditioning: tags dropped, then the whole caption for the guidance null
    tc = TextConditioning(cfg_for(tag_dropout=0.5), ByteTokenizer(24))
    ids = tc.training_ids(["slice of pizza, pizza"] * 64, torch.Generator().manual_seed(2))
    rows = {tuple(r) for r in ids.tolist()}
    assert tuple(ByteTokenizer(24).encode(["pizza"])[0].tolist()) in rows


def test_guidance_with_a_negative_prompt():
    torch.manual_seed(0)
    cfg = cfg_for()
    den = build_denoiser(cfg, None).eval()
    text = TextConditioning.open(cfg)
    cond, neg = text.request(["cat face"], "red heart", 3)
    _, empty = text.request(["cat face"], None, 3)
    assert cond.shape == (3, 12) and neg.shape == (1, 12)
    assert torch.equal(empty, text.ids([""]))
    x, sigma = torch.randn(3, 1, 8, 8), torch.full((3,), 2.0)
    with torch.no_grad():
        guided = CFGDenoiser(den, 3.0, neg)(x, sigma, cond)
        d_c, d_n = den(x, sigma, cond), den(x, sigma, neg.expand(3, -1))
        assert torch.allclose(guided, d_n + 3.0 * (d_c - d_n), atol=1e-5)
        plain = CFGDenoiser(den, 3.0, empty)(x, sigma, cond)
        assert (guided - plain).abs().max() > 1e-4  # the negative prompt is what is pushed from


def test_prompt_rows_are_contiguous_blocks():
    assert prompt_rows(["a", "b"], 4) == ["a", "a", "b", "b"]
    with pytest.raises(ConfigError, match="--prompt"):
        prompt_rows([], 4)


@pytest.mark.parametrize("preset", ["dit-tiny", "dit-s"])
def test_dit_presets_forward_with_class_and_text(preset):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    c = Config(data={"source": "digits", "resolution": 8, "channels": 1}, model={"preset": preset})
    den = build_denoiser(c, 10, shape=(4, 8, 8))
    out = den(x, torch.tensor([0.5, 2.0]), torch.tensor([3, 10]))  # 10 = the null class
    assert out.shape == x.shape
    den.train()  # diffusers' hidden label dropout is off: the same call gives the same output
    with torch.no_grad():
        assert torch.equal(den(x, 1.0, torch.tensor([1, 2])), den(x, 1.0, torch.tensor([1, 2])))
    if preset == "dit-tiny":
        tc = cfg_for(preset)
        tden = build_denoiser(tc, None, shape=(4, 8, 8)).eval()
        ids = TextConditioning.open(tc).ids(["cat", "pizza"])
        assert tden(x, 1.0, ids).shape == x.shape
        assert (tden(x, 1.0, ids) - tden(x, 1.0, ids.flip(0))).abs().max() > 0
        iddpm = build_denoiser(
            Config(**{**c.model_dump(), "diffusion": {"objective": "iddpm"}}), None, (4, 8, 8)
        )
        assert iddpm.backbone(x, torch.ones(2), None).shape == (2, 8, 8, 8)  # learned variance


def test_preset_and_conditioning_mismatches_are_config_errors():
    with pytest.raises(ConfigError, match="no cross-attention"):
        check_config(cfg_for("unet-tiny"))
    plain = Config(data={"source": "digits", "resolution": 8, "channels": 1},
                   model={"preset": "unet-cond-tiny"})  # fmt: skip
    with pytest.raises(ConfigError, match="set text.encoder"):
        check_config(plain)
    dit = Config(data={"source": "digits", "resolution": 8, "channels": 1},
                 model={"preset": "dit-tiny", "layers_per_block": 2})  # fmt: skip
    with pytest.raises(ConfigError, match="only apply to unet"):
        check_config(dit)
    with pytest.raises(ValueError, match="text.path"):
        Config(text={"encoder": "path"})
    with pytest.raises(ConfigError, match="eval.every"):
        check_config(
            cfg_for().model_copy(update={"eval": Config().eval.model_copy(update={"every": 10})})
        )


def test_pretrained_text_encoder_from_a_local_directory_is_frozen(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "cat": 4, "face": 5, "heart": 6}
    wl = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=wl, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>",
    ).save_pretrained(tmp_path)  # fmt: skip
    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(vocab_size=7, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=16)
    ).save_pretrained(tmp_path, safe_serialization=True)  # fmt: skip
    cfg = Config(
        data={"source": "digits", "resolution": 8, "channels": 1},
        model={"preset": "unet-cond-tiny"},
        text={"encoder": "path", "path": str(tmp_path), "max_length": 8},
    )
    check_config(cfg)
    den = build_denoiser(cfg, None).eval()
    enc = den.backbone.text
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())
    text = TextConditioning.open(cfg)
    assert text.ids(["cat face"])[0, :2].tolist() == [4, 5]
    x = torch.randn(1, 1, 8, 8)
    a, b = den(x, 1.0, text.ids(["cat"])), den(x, 1.0, text.ids(["heart"]))
    assert (a - b).abs().max() > 1e-5
    den.train()
    assert not enc.model.training  # a frozen encoder stays in eval mode
    too_long = cfg.model_copy(update={"text": cfg.text.model_copy(update={"max_length": 32})})
    with pytest.raises(ConfigError, match="exceeds the encoder's 16 positions"):
        build_denoiser(too_long, None)
    empty = cfg.model_copy(update={"text": cfg.text.model_copy(update={"path": tmp_path / "x"})})
    with pytest.raises(ConfigError, match="no config.json"):
        TextConditioning.open(empty)


def test_the_emoji_demo_config_is_valid_and_matches_its_prompt_list():
    from pathlib import Path

    from difftrain.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / "emoji-t2i.yaml")
    assert cfg.text.encoder == "scratch" and cfg.model.preset == "unet-cond-small"
    assert cfg.sample.prompts == (root / "emoji-prompts.txt").read_text().split("\n")[:-1]
