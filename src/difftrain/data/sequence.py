"""Numeric sequences from CSV or npz, cut into fixed-length windows for 1-D diffusion.

Missing values are explicit, never silent (`sequence.missing`):
- `mask` (default): a missing entry stays NaN in the window; the training objective fills it
  with 0 (the channel mean after normalisation) as the network's input and leaves it out of the
  loss, which is the mean over the observed entries of each window only.
- `interpolate`: linear interpolation in time within each channel; leading/trailing gaps take
  the nearest observed value. The filled values are then treated as observed.
- `error`: any missing entry is a DataError naming the first one.
A CSV cell is missing when it is empty or one of NaN/NA/nan/null; any other non-number is an
error. Windows whose observed share is below `sequence.min_observed` are dropped (counted).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difftrain.data.errors import DataError

MISSING_TOKENS = {"", "nan", "na", "null", "none"}


@dataclass
class Series:
    values: np.ndarray  # T×C float64, NaN = missing
    columns: list[str]


def read_csv_series(path: Path, columns: list[str] | None = None) -> Series:
    """A header row, then one row per time step; every selected column numeric or missing."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"data.path = {path}: cannot read the CSV ({err})") from None
    if len(rows) < 2:
        raise DataError(f"data.path = {path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    names = columns or header
    missing = [c for c in names if c not in header]
    if missing:
        raise DataError(
            f"sequence.columns: {missing} not in the header of {path} (it has {header})"
        )
    idx = [header.index(c) for c in names]
    out = np.full((len(rows) - 1, len(idx)), np.nan)
    for r, row in enumerate(rows[1:]):
        for j, k in enumerate(idx):
            cell = row[k].strip() if k < len(row) else ""
            if cell.lower() in MISSING_TOKENS:
                continue
            try:
                out[r, j] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: row {r + 2}, column {names[j]!r} = {cell!r} is not a number; "
                    "leave missing values empty (or NaN), or drop the column with "
                    "sequence.columns"
                ) from None
    if not np.isfinite(out[~np.isnan(out)]).all():
        raise DataError(f"{path}: infinite values; remove them or leave the cells empty")
    return Series(out, names)


def read_npz_series(path: Path, key: str | None = None) -> Series:
    """An array of shape T (one channel) or T×C from an .npz (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if key is None and len(keys) != 1:
                raise DataError(
                    f"data.path = {path}: holds {keys}; name the array with sequence.npz_key"
                )
            if key is not None and key not in keys:
                raise DataError(f"sequence.npz_key = {key!r}: not in {path} (it holds {keys})")
            arr = np.asarray(z[key or keys[0]])
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"data.path = {path}: not a readable .npz ({err})") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(
            f"{path}: need a numeric array of shape T or T×C, got {arr.shape} {arr.dtype}"
        )
    arr = arr.astype(np.float64)
    if np.isinf(arr).any():
        raise DataError(f"{path}: infinite values; mark missing entries as NaN")
    return Series(arr, [f"c{i}" for i in range(arr.shape[1])])


def read_series(path: Path, columns: list[str] | None = None, npz_key: str | None = None) -> Series:
    """CSV or npz by the file suffix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path = {path}: no such file (a .csv or .npz of a numeric series)")
    if path.suffix.lower() == ".npz":
        return read_npz_series(path, npz_key)
    if path.suffix.lower() == ".csv":
        return read_csv_series(path, columns)
    raise DataError(f"data.path = {path}: a sequence source reads .csv or .npz files")


def interpolate_missing(values: np.ndarray) -> np.ndarray:
    """Linear interpolation in time per channel; edges take the nearest observed value."""
    out = values.copy()
    t = np.arange(len(values))
    for c in range(values.shape[1]):
        ok = ~np.isnan(values[:, c])
        if not ok.any():
            raise DataError(f"channel {c} has no observed value; drop it with sequence.columns")
        out[:, c] = np.interp(t, t[ok], values[ok, c])
    return out


def apply_missing_rule(series: Series, rule: str, path: Path) -> Series:
    """mask: keep NaN; interpolate: fill; error: refuse (see the module docstring)."""
    nan = np.isnan(series.values)
    if not nan.any() or rule == "mask":
        return series
    if rule == "error":
        t, c = map(int, np.argwhere(nan)[0])
        raise DataError(
            f"{path}: {int(nan.sum())} missing values (first at row {t}, column "
            f"{series.columns[c]!r}) and sequence.missing = 'error'; use 'mask' or 'interpolate'"
        )
    return Series(interpolate_missing(series.values), series.columns)


def channel_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over observed values; a constant channel gets std 1."""
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    return mean, np.where(std > 0, std, 1.0)


def windows(
    values: np.ndarray, length: int, stride: int, min_observed: float
) -> tuple[torch.Tensor, int]:
    """(N×C×1×L float32 windows, NaN kept; number dropped for too few observed entries)."""
    n_time = len(values)
    if n_time < length:
        raise DataError(
            f"the series has {n_time} time steps, fewer than sequence.length = {length}"
        )
    starts = range(0, n_time - length + 1, stride)
    w = np.stack([values[s : s + length].T for s in starts])  # N×C×L
    observed = (~np.isnan(w)).reshape(len(w), -1).mean(1)
    keep = observed >= min_observed
    if not keep.any():
        raise DataError(
            f"no window has an observed share >= sequence.min_observed = {min_observed}"
        )
    return torch.from_numpy(w[keep]).float().unsqueeze(2), int((~keep).sum())
