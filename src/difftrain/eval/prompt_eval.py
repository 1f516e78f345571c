"""Does a text-to-image model follow its prompts? Samples per prompt, classified by the domain
feature network into the data's categories: the share that lands in the prompt's category
(chance = 1 / number of categories), and FID in the same feature space against real images."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from difftrain.config import ConfigError
from difftrain.eval.features import FeatureNet, run_extractor
from difftrain.eval.metrics import fid


def read_prompt_categories(path: Path) -> list[tuple[str, str]]:
    """`prompt<TAB>category` lines (# comments and blank lines skipped); a bad line is an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the prompt list ({err})") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{path}: line {n} is not 'prompt<TAB>category': {line!r}")
        out.append((parts[0], parts[1]))
    if not out:
        raise ConfigError(f"{path}: no prompts")
    return out


def category_index(category: str, class_names: list[str]) -> int:
    """The class of `category`, matched exactly or by its folder slug ('Food & Drink' → food-drink)."""
    slug = re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")
    for i, name in enumerate(class_names):
        if name in (category, slug):
            return i
    raise ConfigError(
        f"category {category!r}: not one of the feature network's classes ({', '.join(class_names)})"
    )


@torch.no_grad()
def prompt_accuracy(
    images_by_prompt: dict[str, torch.Tensor],
    categories: dict[str, int],
    net: FeatureNet,
    reference: torch.Tensor,
) -> dict:
    """Per-prompt and overall share classified into the prompt's category; FID vs `reference`.

    `images_by_prompt` and `reference` are uint8 N×C×H×W at the network's resolution.
    """
    per_prompt, feats, hits, total = {}, [], 0, 0
    for prompt, images in images_by_prompt.items():
        f, logits = run_extractor(net, images)
        hit = int((logits.argmax(1) == categories[prompt]).sum())
        per_prompt[prompt] = hit / len(images)
        hits, total = hits + hit, total + len(images)
        feats.append(f)
    ref_feats, _ = run_extractor(net, reference)
    return {
        "prompt_accuracy": hits / total,
        "chance": 1 / net.spec.num_classes,
        "per_prompt": per_prompt,
        "fid_domain": fid(ref_feats, torch.cat(feats)),
        "images": total,
        "reference_images": len(reference),
    }
