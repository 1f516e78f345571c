#!/usr/bin/env python3
"""Prepare the emoji text-to-image dataset from the npm package `emoji-datasource-google`.

    python scripts/prepare_emoji.py                    # → data-cache/emoji/ (not in git)

Runs `npm pack emoji-datasource-google@VERSION` into a cache folder (once), reads the 64×64 PNGs
(`img/google/64/`) and `emoji.json` straight from the tarball (nothing is extracted to disk
under names taken from it), composites each image's alpha on white, and writes an image folder:

    OUT/<category-slug>/<code points>.png    one sub-folder per emoji.json category (the class)
    OUT/metadata.jsonl                       {"file_name", "text", "category", "subcategory", ...}

The caption `text` is the lower-cased Unicode name followed by the short names, e.g.
"slice of pizza, pizza" or "heavy black heart, heart"; skin-tone variants add the tone
("waving hand sign, wave, medium skin tone"). Sub-folders make the category the class label,
so `difftrain features train` learns the categories the demo's evaluation needs.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from PIL import Image

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"  # pinned: the image set and names of the measured demo
IMAGE_DIR = "package/img/google/64/"
TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
IMAGE_NAME = re.compile(r"^[0-9a-f]+(-[0-9a-f]+)*\.png$")


def slug(text: str) -> str:
    """'Smileys & Emotion' → 'smileys-emotion'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "other"


def caption(entry: dict, tone_key: str | None = None) -> str:
    """Lower-cased name, then short names not already in it, then the skin tone(s)."""
    name = str(entry.get("name") or "").lower().strip()
    parts = [name] if name else []
    for short in entry.get("short_names") or []:
        words = str(short).replace("_", " ").replace("-", " ").strip()
        if words and words != name and words not in parts:
            parts.append(words)
    if tone_key:
        tones = [TONES.get(k.upper()) for k in tone_key.split("-")]
        parts.append(" and ".join(t for t in tones if t) or "skin tone")
    return ", ".join(parts)


def records(emoji: list[dict], skin_tones: bool = True):
    """(image file name, caption, entry) for every Google image: base emoji and skin variants."""
    for e in emoji:
        if e.get("has_img_google") and e.get("image"):
            yield e["image"], caption(e), e
        variants = (e.get("skin_variations") or {}) if skin_tones else {}
        for key, var in variants.items():
            if var.get("has_img_google") and var.get("image"):
                yield var["image"], caption(e, key), e


def fetch(cache: Path, spec: str) -> Path:
    """The package tarball in `cache`, downloaded with `npm pack` when it is not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    name = spec.split("@")[0]
    version = spec.split("@")[1] if "@" in spec else None
    found = sorted(cache.glob(f"{name}-{version or '*'}.tgz"))
    if found:
        return found[-1]
    print(f"npm pack {spec} → {cache}", file=sys.stderr)
    subprocess.run(["npm", "pack", spec, "--pack-destination", str(cache)], check=True)
    found = sorted(cache.glob(f"{name}-{version or '*'}.tgz"))
    if not found:
        raise SystemExit(f"npm pack {spec} wrote no tarball into {cache}")
    return found[-1]


def on_white(data: bytes, size: int) -> Image.Image:
    """An RGBA PNG composited on a white background, as RGB at size×size."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGBA")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")


def prepare(
    tarball: Path, out: Path, size: int = 64, limit: int | None = None, skin_tones: bool = True
) -> dict:
    """Write OUT/<category>/<image>.png and OUT/metadata.jsonl; returns counts."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        if "package/emoji.json" not in members:
            raise SystemExit(f"{tarball}: no package/emoji.json; not {PACKAGE}")
        emoji = json.load(tar.extractfile(members["package/emoji.json"]))
        if not isinstance(emoji, list):
            raise SystemExit(f"{tarball}: emoji.json is not a list of emoji")
        rows, missing, categories = [], 0, {}
        for image, text, entry in records(emoji, skin_tones):
            member = members.get(IMAGE_DIR + image)
            if member is None or not IMAGE_NAME.match(image):
                missing += 1
                continue
            category = str(entry.get("category") or "Other")
            rel = f"{slug(category)}/{image}"
            (out / slug(category)).mkdir(parents=True, exist_ok=True)
            on_white(tar.extractfile(member).read(), size).save(out / rel)
            categories[category] = categories.get(category, 0) + 1
            rows.append(
                {
                    "file_name": rel,
                    "text": text,
                    "category": category,
                    "subcategory": entry.get("subcategory"),
                    "short_names": entry.get("short_names"),
                }
            )
            if limit is not None and len(rows) >= limit:
                break
    with (out / "metadata.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"images": len(rows), "missing": missing, "categories": categories}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data-cache/emoji"))
    p.add_argument("--cache", type=Path, default=Path("data-cache/npm"), help="npm pack folder")
    p.add_argument("--package", default=f"{PACKAGE}@{VERSION}", help="npm package spec")
    p.add_argument("--tarball", type=Path, help="use this package tarball instead of npm pack")
    p.add_argument("--size", type=int, default=64, help="output side in pixels")
    p.add_argument("--limit", type=int, help="only the first N images (quick tries)")
    p.add_argument(
        "--no-skin-tones",
        action="store_true",
        help="skip the 1,875 skin-tone variants (1,911 base emoji instead of 3,786 images)",
    )
    a = p.parse_args(argv)
    tarball = a.tarball or fetch(a.cache, a.package)
    a.out.mkdir(parents=True, exist_ok=True)
    counts = prepare(tarball, a.out, a.size, a.limit, not a.no_skin_tones)
    print(json.dumps({"out": str(a.out), **counts}, indent=1))


if __name__ == "__main__":
    main()
