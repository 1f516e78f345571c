#!/usr/bin/env python3
"""Measure how often a text-to-image run's samples land in each prompt's category.

    difftrain features train configs/emoji-t2i.yaml          # classifier on the emoji categories
    python scripts/prompt_eval.py runs/emoji-t2i --prompts configs/emoji-eval-prompts.tsv

Generates `--num` images per prompt (image i of every prompt from seed and i, as `difftrain
sample` does), classifies them with the domain feature network of `difftrain features train`, and
writes RUN/prompt_eval.json: the share of samples in the prompt's category (chance = 1/classes),
per prompt and overall, and FID in that feature space against the run's validation images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    from difftrain.data import load_data
    from difftrain.eval.features import load_feature_net
    from difftrain.eval.prompt_eval import category_index, prompt_accuracy, read_prompt_categories
    from difftrain.pipeline.request import GenerationRequest, run_request
    from difftrain.pipeline.run import load_run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--prompts", type=Path, required=True, help="prompt<TAB>category per line")
    p.add_argument("--feature-net", type=Path, help="default: RUN/features")
    p.add_argument("--num", type=int, default=32, help="images per prompt")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--guidance", type=float, help="guidance weight (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, help="a checkpoint dir (default: the latest)")
    p.add_argument("--out", type=Path, help="default: RUN/prompt_eval.json")
    a = p.parse_args(argv)

    run = load_run(a.run, checkpoint=a.checkpoint)
    net, info = load_feature_net(a.feature_net or a.run / "features")
    pairs = read_prompt_categories(a.prompts)
    categories = {prompt: category_index(cat, info["class_names"]) for prompt, cat in pairs}
    images = {}
    for prompt, _ in pairs:
        req = GenerationRequest(
            num=a.num, seed=a.seed, prompt=prompt, steps=a.steps, guidance=a.guidance
        )
        images[prompt] = torch.cat([b.images for b in run_request(run, req)])
    # Reference: the run's validation split (same seed and fraction as training), as pixels.
    cfg = run.config
    _, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
    result = prompt_accuracy(images, categories, net, val.images)
    result.update({"num_per_prompt": a.num, "seed": a.seed, "checkpoint": str(run.checkpoint)})
    out = a.out or a.run / "prompt_eval.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("prompt_accuracy", "chance", "fid_domain")}))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
