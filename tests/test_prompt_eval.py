"""Prompt-following measurement: share of samples classified into the prompt's category."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difftrain.config import ConfigError
from difftrain.eval.features import FeatureNet, FeatureNetSpec
from difftrain.eval.prompt_eval import category_index, prompt_accuracy, read_prompt_categories


def rigged_net(winner: int) -> FeatureNet:
    """A feature net whose classifier always answers `winner`."""
    net = FeatureNet(FeatureNetSpec(channels=3, num_classes=3, width=8, feature_dim=8)).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[winner] = 1.0
    return net


def test_prompt_accuracy_counts_samples_in_the_prompt_category():
    torch.manual_seed(0)
    imgs = {p: torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8) for p in ("a", "b")}
    ref = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = prompt_accuracy(imgs, {"a": 1, "b": 2}, rigged_net(1), ref)
    assert out["per_prompt"] == {"a": 1.0, "b": 0.0}
    assert out["prompt_accuracy"] == 0.5 and out["chance"] == pytest.approx(1 / 3)
    assert out["fid_domain"] >= 0 and out["images"] == 8


def test_prompt_files_and_categories(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("# comment\ncat face\tAnimals & Nature\n\npizza\tFood & Drink\n")
    assert read_prompt_categories(f) == [
        ("cat face", "Animals & Nature"),
        ("pizza", "Food & Drink"),
    ]
    names = ["animals-nature", "food-drink"]
    assert category_index("Food & Drink", names) == 1  # the folder slug of the category
    with pytest.raises(ConfigError, match="not one of"):
        category_index("Flags", names)
    f.write_text("no tab here\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_prompt_categories(f)
    demo = Path(__file__).resolve().parents[1] / "configs" / "emoji-eval-prompts.tsv"
    cats = {c for _, c in read_prompt_categories(demo)}
    assert len(cats) == 9  # every emoji.json category but the 5-image 'Component'
