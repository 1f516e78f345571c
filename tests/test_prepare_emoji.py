"""scripts/prepare_emoji.py on a small package tarball built here (the real one is 74 MB)."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from difftrain.config import Config
from difftrain.data import load_data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_emoji.py"


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_emoji", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rgba_png(color) -> bytes:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent
    img.paste(Image.new("RGBA", (32, 32), color), (16, 16))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_tarball(path: Path) -> None:
    emoji = [
        {"name": "CAT FACE", "short_names": ["cat"], "image": "1f431.png", "category":
         "Animals & Nature", "subcategory": "animal-mammal", "has_img_google": True},
        {"name": "WAVING HAND SIGN", "short_names": ["wave"], "image": "1f44b.png",
         "category": "People & Body", "subcategory": "hand", "has_img_google": True,
         "skin_variations": {"1F3FD": {"image": "1f44b-1f3fd.png", "has_img_google": True}}},
        {"name": "NO IMAGE", "short_names": ["none"], "image": "ffff.png", "category": "Symbols",
         "has_img_google": True},
        {"name": "ESCAPE", "short_names": ["x"], "image": "../../evil.png", "category": "Symbols",
         "has_img_google": True},
    ]  # fmt: skip
    files = {
        "package/emoji.json": json.dumps(emoji).encode(),
        "package/img/google/64/1f431.png": rgba_png((255, 0, 0, 255)),
        "package/img/google/64/1f44b.png": rgba_png((0, 0, 255, 255)),
        "package/img/google/64/1f44b-1f3fd.png": rgba_png((0, 128, 0, 255)),
        "package/img/google/64/../../evil.png": rgba_png((0, 0, 0, 255)),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_prepare_emoji_writes_captioned_category_folders(tmp_path):
    mod = load_script()
    tgz = tmp_path / "emoji-datasource-google-0.0.0.tgz"
    make_tarball(tgz)
    out = tmp_path / "emoji"
    mod.main(["--tarball", str(tgz), "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [
        "cat face, cat",
        "waving hand sign, wave",
        "waving hand sign, wave, medium skin tone",
    ]
    assert rows[0]["file_name"] == "animals-nature/1f431.png"
    assert rows[0]["category"] == "Animals & Nature"
    assert not (tmp_path / "evil.png").exists()  # names from the package never leave OUT
    img = np.asarray(Image.open(out / rows[0]["file_name"]))
    assert img.shape == (64, 64, 3)
    assert img[0, 0].tolist() == [255, 255, 255]  # transparent → white
    assert img[32, 32].tolist() == [255, 0, 0]
    # The folder source reads the category as the class and the caption from metadata.jsonl.
    data = load_data(Config(data={"path": str(out), "resolution": 32}).data)
    assert data.class_names == ["animals-nature", "people-body"]
    assert sorted(data.captions) == sorted(r["text"] for r in rows)
    # without skin tones: base emoji only
    out2 = tmp_path / "base"
    mod.main(["--tarball", str(tgz), "--out", str(out2), "--no-skin-tones"])
    assert len((out2 / "metadata.jsonl").read_text().splitlines()) == 2
