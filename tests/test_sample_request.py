"""One request for every way of sampling: checks against the model, batch-by-batch output,
bounded counts (issue 13 item 16), and init images / masks decoded and fitted like training
images (item 15)."""

from __future__ import annotations

import io
import json
import multiprocessing
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import difftrain.pipeline.request as request_mod
from difftrain.cli.main import app
from difftrain.config import ConfigError
from difftrain.pipeline.request import (
    GenerationRequest,
    Limits,
    plan_request,
    run_merged,
    run_request,
)
from difftrain.pipeline.run import load_run
from tests.run_fixtures import make_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("req") / "run")


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def images(run, req, **kw):
    return torch.cat([b.images for b in run_request(run, req, **kw)])


def test_image_depends_only_on_seed_and_index(run):
    whole = images(run, GenerationRequest(num=5, seed=3, class_label=1), batch_size=5)
    split = images(run, GenerationRequest(num=5, seed=3, class_label=1), batch_size=2)
    assert whole.dtype == torch.uint8 and whole.shape == (5, 1, 8, 8)
    assert torch.equal(whole, split)
    tail = images(run, GenerationRequest(num=2, seed=3, first_index=3, class_label=1))
    assert torch.equal(tail, whole[3:])
    other = images(run, GenerationRequest(num=5, seed=4, class_label=1))
    assert not torch.equal(other, whole)


def test_merged_requests_equal_each_alone(run):
    a = plan_request(run, GenerationRequest(num=3, seed=1, class_label=2, steps=3))
    b = plan_request(run, GenerationRequest(num=2, seed=8, class_label=5, steps=3))
    assert a.batch_key() == b.batch_key()
    merged = run_merged(run, [a, b])
    assert torch.equal(merged[0].images, images(run, a))
    assert torch.equal(merged[1].images, images(run, b))
    assert merged[1].labels == [5, 5] and merged[1].indices == [0, 1]
    c = plan_request(run, GenerationRequest(num=1, seed=1, class_label=2, steps=4))
    assert c.batch_key() != a.batch_key()
    png = io.BytesIO()
    Image.new("L", (8, 8), 50).save(png, format="PNG")
    i2i = plan_request(run, GenerationRequest(init_image=png.getvalue(), class_label=2, steps=3))
    assert i2i.batch_key() is None  # img2img carries its own image: it runs alone
    with pytest.raises(ValueError):
        run_merged(run, [a, c])


@pytest.mark.parametrize(
    "req, message",
    [
        (GenerationRequest(prompt="a cat"), "not text-conditioned"),
        (GenerationRequest(class_label=10), "allowed 0..9 (0=digit 0"),
        (GenerationRequest(class_label=-1), "allowed 0..9"),
        (GenerationRequest(num=0), "num = 0"),
        (GenerationRequest(steps=20_000), "steps = 20000: allowed 1..10000"),
        (GenerationRequest(sampler="nope"), "unknown (allowed: euler"),
        (GenerationRequest(sampler=""), "sampler '': unknown"),
        (GenerationRequest(schedule=""), "sample.schedule = ''"),
        (GenerationRequest(size=64), "8x8 images only"),
        (GenerationRequest(schedule="training"), "needs diffusion.objective"),
        (GenerationRequest(eta=0.5, sampler="heun"), "only used by the 'ddim'"),
        (GenerationRequest(strength=0.5), "strength needs init_image"),
        (GenerationRequest(mask=b"x"), "mask needs init_image"),
        (GenerationRequest(guidance_interval=(3.0, 1.0)), "needs 0 <= lo < hi"),
        (GenerationRequest(prompt="x" * 3000), "at most 2000"),
        (GenerationRequest(init_image=b"not an image"), "init_image (12 bytes): unusable"),
    ],
)
def test_bad_requests_are_config_errors_naming_the_field(run, req, message):
    with pytest.raises(ConfigError, match=None) as err:
        plan_request(run, req)
    assert message in str(err.value)


def test_unconditional_model_refuses_class_and_guidance(tmp_path):
    run = load_run(make_run(tmp_path / "u", num_classes=None))
    with pytest.raises(ConfigError, match="unconditional"):
        plan_request(run, GenerationRequest(class_label=0))
    with pytest.raises(ConfigError, match="guidance = 2.0"):
        plan_request(run, GenerationRequest(guidance=2.0))
    assert images(run, GenerationRequest(num=2)).shape == (2, 1, 8, 8)


def test_tighter_limits(run):
    with pytest.raises(ConfigError, match="num = 5: allowed 1..4"):
        plan_request(run, GenerationRequest(num=5), Limits(max_num=4))


# ---- issue 13 item 16: bounded --num, written batch by batch ----


def _capped_sample(args: list[str], queue) -> None:
    """Child process: 4 GiB of address space at most, then the CLI in-process."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    res = runner.invoke(app, args)
    queue.put((res.exit_code, res.output, repr(res.exception)))


def test_absurd_num_exits_2_at_once_without_allocating(run_dir, tmp_path):
    """In a forked child capped at 4 GiB of address space: the old code allocated labels and
    images for all 10**9 samples up front (MemoryError, exit 1)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    args = ["sample", str(run_dir), "--num", str(10**9), "--out", str(tmp_path / "o")]
    t0 = time.perf_counter()
    child = ctx.Process(target=_capped_sample, args=(args, queue))
    child.start()
    code, output, exc = queue.get(timeout=120)
    child.join(30)
    assert code == 2, output + exc
    assert "--num 1000000000: at most 100000 images per command" in output
    assert not (tmp_path / "o").exists()
    assert time.perf_counter() - t0 < 10


def test_sample_writes_each_batch_before_making_the_next(run_dir, tmp_path, monkeypatch):
    out, seen = tmp_path / "out", []
    real = request_mod.generate

    def spy(*args, **kw):
        seen.append(len(list(out.glob("0*.png"))) if out.exists() else 0)
        return real(*args, **kw)

    monkeypatch.setattr(request_mod, "generate", spy)
    args = ["sample", str(run_dir), "--num", "10", "--batch-size", "4", "--seed", "2"]
    res = runner.invoke(app, [*args, "--out", str(out), "--npz", str(tmp_path / "s.npz")])
    assert res.exit_code == 0, res.output
    assert seen == [0, 4, 8]  # three batches; each one's PNGs exist before the next is made
    with np.load(tmp_path / "s.npz") as z:
        arr, labels = z["images"], z["labels"]
    assert arr.shape == (10, 8, 8, 1) and labels.tolist() == [i for i in range(10)]
    for i in (0, 5, 9):
        assert np.array_equal(np.asarray(Image.open(out / f"{i:06d}.png")), arr[i, ..., 0])
    assert not list(tmp_path.glob(".s.npz*"))  # the partial file was renamed into place


def test_grid_is_a_bounded_subset_with_one_row_per_class(run_dir, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["sample", str(run_dir), "--num", "300", "--steps", "1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out / "sample.json").read_text())
    assert info["grid_images"] == 250  # 10 classes x 25 columns, not 300
    assert len(list(out.glob("0*.png"))) == 300
    grid = Image.open(out / "grid.png")
    # 25 columns x 10 rows of 8-px cells with 2-px gaps, upscaled so the short side >= 256
    assert grid.size[0] * (10 * 10 + 2) == grid.size[1] * (25 * 10 + 2)


# ---- issue 13 item 15: init image and mask through the training decoder and geometry ----


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (a decompression bomb's signature)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_init_image_exits_2(run_dir, tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30_000, 30_000)
    args = ["sample", str(run_dir), "--num", "1", "--init-image", str(bomb)]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, repr(res.exception)
    assert "too_large" in res.output and "bomb.png" in res.output


def test_init_image_exif_orientation_is_applied(run_dir, tmp_path):
    """Stored 16x8 (left black, right white) with EXIF orientation 6 (rotate 90° clockwise
    for display): the displayed image is 8x16, black on top. At strength 0, img2img returns
    the fitted input, so the written PNG shows what the model was given."""
    arr = np.zeros((8, 16), np.uint8)
    arr[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=100)
    out = tmp_path / "o"
    args = ["sample", str(run_dir), "--num", "1", "--init-image", str(path), "--strength", "0"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(out / "000000.png"), dtype=np.int32)
    # displayed 8x16 black-over-white, center-cropped to 8x8 and resized to 8x8: rows 0..3
    # come from the black half, rows 4..7 from the white half
    assert got[:3].mean() < 40 and got[5:].mean() > 215, got


def test_mask_of_another_size_is_refused(run_dir, tmp_path):
    Image.new("L", (16, 8), 100).save(tmp_path / "img.png")
    Image.new("L", (9, 9), 255).save(tmp_path / "mask.png")
    args = ["sample", str(run_dir), "--num", "1", "--init-image", str(tmp_path / "img.png")]
    res = runner.invoke(app, [*args, "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "is 9x9 but the init image is 16x8" in res.output


def test_pad_resize_pads_the_mask_like_the_image(tmp_path):
    """data.resize = pad: a 16x8 image becomes 8x4 pasted at rows 2..5 of a white 8x8. The mask
    (white = generate on the left half) must cover columns 0..3 of rows 2..5 only: the white
    padding and the right half are kept exactly. The old code stretched the mask to 8x8, so
    it also regenerated the padding."""
    run = make_run(tmp_path / "pad", **{"data.resize": "pad"})
    Image.new("L", (16, 8), 100).save(tmp_path / "img.png")
    mask = np.zeros((8, 16), np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "o"
    args = ["sample", str(run), "--num", "2", "--init-image", str(tmp_path / "img.png")]
    res = runner.invoke(app, [*args, "--mask", str(tmp_path / "mask.png"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for i in range(2):
        got = np.asarray(Image.open(out / f"{i:06d}.png"))
        assert (got[[0, 1, 6, 7]] == 255).all(), got  # padding kept
        assert (got[2:6, 4:] == 100).all(), got  # right half kept
        assert (got[2:6, :4] != 100).any(), got  # left half generated
