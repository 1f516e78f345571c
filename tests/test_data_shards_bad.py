"""Bad WebDataset samples: side files, duplicate names and oversized members are skipped,
counted by reason and listed, and the rest of the shard is still read (issue 13, items 10-11)."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc

import pytest

from difftrain.config import load_config
from difftrain.data import load_data, open_loader
from difftrain.data.inspect import inspect_data
from tests.data_fixtures import COLORS, encode, pattern

N = 50
BAD_SIDE = {3: ("cls", b"cat"), 7: ("json", b"{not json"), 11: ("txt", b"caf\xe9 \xff\xfe")}
DUP = 20  # this sample's image member appears twice
EXPECTED = {"bad_label": 1, "bad_metadata": 1, "bad_caption": 1, "duplicate": 1}


def png(k: int) -> bytes:
    return encode(pattern((12, 10), list(COLORS.values())[k % 3], seed=k), "PNG")


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_bad_shard(path, n: int = N) -> set[str]:
    """One tar of n samples (png + cls + txt + json) with four bad ones; returns the good keys."""
    good = set()
    with tarfile.open(path, "w") as tf:
        for k in range(n):
            key = f"s{k:05d}"
            fields = {
                "png": png(k),
                "cls": str(k % 3).encode(),
                "txt": f"sample {k}".encode(),
                "json": b'{"source": "test"}',
            }
            if k in BAD_SIDE:
                field, data = BAD_SIDE[k]
                fields[field] = data
            for field, data in fields.items():
                add(tf, f"{key}.{field}", data)
                if k == DUP and field == "png":
                    add(tf, f"{key}.png", data)  # the same member name twice
            if k not in BAD_SIDE and k != DUP:
                good.add(key)
    return good


def cfg(path, *extra):
    base = [
        "data.source=webdataset",
        f"data.path={path}",
        "data.resolution=8",
        "data.val_fraction=0",
        "data.max_bad_fraction=0.2",
    ]
    return load_config(None, base + list(extra)).data


def test_bad_side_files_and_duplicates_are_counted_and_the_rest_is_read(tmp_path):
    good = write_bad_shard(tmp_path / "shard-0000.tar")
    data = load_data(cfg(tmp_path))  # the in-memory path reads with verify: none
    assert set(data.files) == good and len(data) == N - 4  # 46: nothing after the bad ones lost
    assert {k: len(v) for k, v in data.skipped.items()} == EXPECTED
    assert data.bad.total == N
    listed = {f["path"] for f in data.bad.files}
    assert listed == {f"shard-0000.tar/s{k:05d}" for k in [*BAD_SIDE, DUP]}
    assert data.captions[0] == "sample 0" and data.labels[:3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("verify", ["none", "header", "full"])
def test_streaming_skips_bad_samples_for_every_verify_mode(tmp_path, verify):
    good = write_bad_shard(tmp_path / "shard-0000.tar")
    c = cfg(tmp_path, f"data.verify={verify}", "data.loader=stream", "data.shuffle_buffer=4")
    loader, _ = open_loader(c, seed=0, batch_size=2, workers=0)
    assert {k: len(v) for k, v in loader.bad.by_reason.items()} == EXPECTED
    keys = [k for _ in range(N - 4) for k in loader.next().keys]  # two epochs of 46
    assert set(keys) == good and len(keys) == 2 * (N - 4)
    assert len(loader.bad) == 4 and loader.bad.total == N  # found again each epoch: listed once


def test_data_inspect_lists_bad_samples(tmp_path):
    write_bad_shard(tmp_path / "shard-0000.tar")
    report = inspect_data(cfg(tmp_path), full=False)
    assert report["bad_files"]["by_reason"] == EXPECTED and report["images"] == N - 4


def test_same_key_in_two_shards_is_not_confused(tmp_path):
    """A bad sample's key in one shard must not drop the good sample of that key in another."""
    write_bad_shard(tmp_path / "shard-0000.tar")
    with tarfile.open(tmp_path / "shard-0001.tar", "w") as tf:
        add(tf, "s00003.png", png(3))
        add(tf, "s00003.cls", b"1")
    data = load_data(cfg(tmp_path))
    assert data.files.count("s00003") == 1 and len(data) == N - 4 + 1


def write_txt_bomb(path, txt_bytes: int, n_after: int = 3) -> None:
    """A .tar.gz: one sample whose .txt is txt_bytes of zeros (tiny compressed), then n_after good."""

    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tf:
        add(tf, "big.png", png(0))
        info = tarfile.TarInfo("big.txt")
        info.size = txt_bytes
        tf.addfile(info, io.BufferedReader(Zeros(txt_bytes)))
        for k in range(1, n_after + 1):
            add(tf, f"ok{k}.png", png(k))


def test_oversized_member_is_counted_and_never_read_whole(tmp_path):
    write_txt_bomb(tmp_path / "shard.tar.gz", 24 * 2**20)
    assert (tmp_path / "shard.tar.gz").stat().st_size < 200_000
    c = cfg(tmp_path, "data.max_member_bytes=1048576", "data.max_bad_fraction=0.5")
    tracemalloc.start()
    try:
        data = load_data(c)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # reading the member would allocate 24 MiB
    assert sorted(data.files) == ["ok1", "ok2", "ok3"]
    assert data.skipped == {"member_too_large": ["shard.tar.gz/big"]}
    detail = data.bad.files[0]["detail"]
    assert "big.txt" in detail and "data.max_member_bytes" in detail
    # Under the bound the same member is read (its caption is 24 MiB of NULs: kept).
    data = load_data(cfg(tmp_path, "data.max_member_bytes=33554432"))
    assert len(data) == 4 and not data.skipped


def test_max_member_bytes_is_validated():
    from difftrain.config import ConfigError

    assert load_config(None, []).data.max_member_bytes == 64 * 2**20  # the README default
    with pytest.raises(ConfigError, match="max_member_bytes"):
        load_config(None, ["data.max_member_bytes=0"])
