"""Decoding: special modes, EXIF, 16-bit precision, and every kind of bad file."""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from difftrain.config import load_config
from difftrain.data import load_data, write_bad_files
from difftrain.data.decode import BadImage, decode_image, load_normalized, probe_image
from difftrain.data.transforms import fit, pil_to_uint8
from tests.data_fixtures import (
    EXPECTED_REASONS,
    make_bad_files,
    make_special_images,
    make_unreadable,
)

MAX = 64_000_000


@pytest.fixture(scope="module")
def special(tmp_path_factory):
    return make_special_images(tmp_path_factory.mktemp("special"))


def rgb(path: Path) -> np.ndarray:
    return np.asarray(load_normalized(path, 3, MAX))


def test_transparency_is_composited_onto_white(special):
    a = rgb(special["rgba"])
    assert tuple(a[0, 0]) == (0, 0, 255)  # opaque blue half kept
    assert tuple(a[0, 15]) == (255, 255, 255)  # transparent half is white, not red or black
    assert (rgb(special["la"]) == 255).all()
    assert (rgb(special["p_transparent"]) == 255).all()


def test_cmyk_becomes_rgb(special):
    r, g, b = rgb(special["cmyk"])[8, 8].astype(int)
    assert r > 200 and g < 40 and b < 40


def test_exif_orientation_is_applied(special):
    img = load_normalized(special["exif_rot"], 3, MAX)
    assert img.size == (24, 48)  # stored 48×24 landscape, displayed portrait
    a = np.asarray(img).astype(int)
    assert a[:20].mean() < 40 and a[-20:].mean() > 215  # black half on top after rotation
    assert probe_image(special["exif_rot"], MAX)[0] == (24, 48)  # header probe agrees


@pytest.mark.parametrize("name", ["gray16_png", "gray16_tiff"])
def test_16bit_keeps_precision_until_the_final_scale(special, name):
    img = load_normalized(special[name], 1, MAX)
    assert img.mode == "F"  # not clipped to 8 bits on the way
    small = fit(img, (16, 16), "stretch")  # resampled in float
    out = pil_to_uint8(small, 1)[0]
    # A 0..65535 ramp must stay a ramp (a naive convert('L') makes it all 255).
    assert 100 < out.mean() < 155 and out.min() < 15 and out.max() > 240
    assert (np.diff(out[8].astype(int)) >= 0).all()
    assert pil_to_uint8(fit(img, (16, 16), "stretch"), 3).shape == (3, 16, 16)


def test_gif_first_frame_webp_tiff_and_wrong_extension(special):
    assert tuple(rgb(special["gif"])[0, 0]) == (0, 200, 0)  # frame 0, not frame 1
    assert rgb(special["tiff_rgb"]).shape == (20, 20, 3)
    assert rgb(special["jpeg_named_png"]).shape == (20, 20, 3)  # decoded by content


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", sorted(EXPECTED_REASONS))
def test_bad_file_reasons(bad, name):
    with pytest.raises(BadImage) as err:
        decode_image(bad[name], MAX)
    assert err.value.reason == EXPECTED_REASONS[name]


def test_truncated_after_header_is_caught_at_decode(tmp_path):
    from tests.data_fixtures import encode, pattern

    data = encode(pattern((64, 64), (50, 60, 70), seed=5), "JPEG", quality=95)
    f = tmp_path / "late.jpg"
    f.write_bytes(data[: int(len(data) * 0.8)])
    probe_image(f, MAX)  # the header is intact
    with pytest.raises(BadImage) as err:
        decode_image(f, MAX)
    assert err.value.reason == "truncated"


def test_decompression_bomb_is_refused_from_the_header(bad):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    t = time.perf_counter()
    for _ in range(3):
        with pytest.raises(BadImage):
            decode_image(bad["bomb"], MAX)
    assert time.perf_counter() - t < 1.0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 100 * 1024  # decoding would take 400 MB
    assert bad["bomb"].stat().st_size < 200_000
    with pytest.raises(BadImage) as err:  # below Pillow's own limit: our max_pixels decides
        decode_image(bad["bomb"], 1000)
    assert err.value.reason == "too_large"


def _reason_in_child(path: Path, drop_root: bool) -> str:
    """decode_image in a forked child (no exec: the interpreter may sit in root's home)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if drop_root:
                os.setgid(65534)
                os.setuid(65534)  # `nobody`: file permissions now apply
            try:
                decode_image(path, 10**6)
                msg = "read"
            except BadImage as err:
                msg = err.reason
        except BaseException as err:  # noqa: BLE001 - report anything to the parent
            msg = f"error {err!r}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    os.waitpid(pid, 0)
    return msg


def test_unreadable_file_as_a_non_root_user():
    """Permissions: root reads everything, so as root the check runs in a child that drops to
    `nobody` (uid 65534) before opening a mode-000 file; as a normal user it runs directly."""
    d = Path(tempfile.mkdtemp())
    try:
        d.chmod(0o755)
        f = make_unreadable(d / "locked.png")
        assert _reason_in_child(f, drop_root=os.geteuid() == 0) == "unreadable"
    finally:
        for p in d.iterdir():
            p.chmod(0o644)
            p.unlink()
        d.rmdir()


def test_folder_with_bad_files_skips_counts_and_lists_them(tmp_path, bad):
    from tests.data_fixtures import make_class_folder

    root = make_class_folder(tmp_path / "imgs", per_class=4)
    for path in bad.values():
        target = root / "red" / path.name
        if path.is_symlink():
            os.symlink(os.readlink(path), target)
        else:
            target.write_bytes(path.read_bytes())
    cfg = load_config(
        None, [f"data.path={root}", "data.resolution=16", "data.max_bad_fraction=0.5"]
    )
    data = load_data(cfg.data)
    assert len(data) == 12  # every good image, nothing silently dropped
    counts = {k: len(v) for k, v in data.skipped.items()}
    assert counts == {"truncated": 2, "empty": 1, "not_an_image": 1, "too_large": 1, "missing": 1}
    assert data.bad.total == 18
    report = write_bad_files(tmp_path / "run", data.bad)
    import json

    saved = json.loads(report.read_text())
    assert saved["bad"] == 6 and saved["by_reason"]["truncated"] == 2
    assert {Path(f["path"]).name for f in saved["files"]} == {p.name for p in bad.values()}

    # Above the allowed rate the run stops at start, naming the key to change.
    cfg = load_config(None, [f"data.path={root}", "data.resolution=16"])  # default 5%
    from difftrain.data import DataError

    with pytest.raises(DataError, match=r"data.max_bad_fraction = 0.05.*6 of 18|6 of 18.*max_bad"):
        load_data(cfg.data)
