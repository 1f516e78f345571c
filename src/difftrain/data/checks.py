"""Config-time checks of the data section that touch the file system or span keys."""

from __future__ import annotations

from difftrain.config import ConfigError


def check_data(d, factor: int = 1) -> None:
    """Raise ConfigError naming the data.* key, its value and the fix; nothing is read yet.

    `factor` is the model's downsampling: every training size must be a multiple of it.
    """
    if d.source != "digits":
        if d.path is None:
            raise ConfigError(f"data.path is required for data.source = {d.source!r}")
        if not d.path.exists():
            raise ConfigError(
                f"data.path = '{d.path}': does not exist (source {d.source!r}); "
                "set data.path to an existing folder or file"
            )
    if d.source == "npz" and d.path.is_dir():
        raise ConfigError(f"data.path = '{d.path}': source 'npz' needs an .npz file")
    if d.source in ("folder", "idx") and not d.path.is_dir():
        raise ConfigError(f"data.path = '{d.path}': source {d.source!r} needs a directory")
    if d.source == "idx" and d.split not in ("train", "test"):
        raise ConfigError(f"data.split = {d.split!r}: IDX files have 'train' or 'test'")
    if d.source == "hf":
        from difftrain.data.hf import is_saved_dataset, parquet_files

        if not (is_saved_dataset(d.path) or parquet_files(d.path)):
            raise ConfigError(
                f"data.path = '{d.path}': source 'hf' needs a save_to_disk folder or "
                ".parquet file(s)"
            )
    if d.source == "webdataset":
        from difftrain.data.shards import find_shards

        if not find_shards(d.path):
            raise ConfigError(f"data.path = '{d.path}': source 'webdataset' needs .tar shard(s)")
    stream_only = []
    if d.resize == "random_crop":
        stream_only.append("data.resize = 'random_crop'")
    if d.buckets.enabled:
        stream_only.append("data.buckets.enabled = true")
    if stream_only and d.loader != "stream":
        raise ConfigError(
            f"{' and '.join(stream_only)} need per-sample decoding: set data.loader = 'stream' "
            "(or use data.augment.resized_crop with the in-memory loader)"
        )
    if d.buckets.enabled:
        if d.buckets.step % factor:
            raise ConfigError(
                f"data.buckets.step = {d.buckets.step}: must be a multiple of {factor}, the "
                f"model's downsampling; try {max(factor, d.buckets.step // factor * factor)}"
            )
        bad = [r for r in (d.buckets.resolutions or [d.resolution]) if r < d.buckets.step]
        if bad:
            raise ConfigError(
                f"data.buckets.resolutions = {bad}: each must be >= data.buckets.step"
            )
