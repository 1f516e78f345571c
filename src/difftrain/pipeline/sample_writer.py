"""Write generated images as they arrive: PNGs, a grid of a bounded subset, a streamed .npz.

Memory stays flat in the number of images: each batch is written and dropped; only the grid's
subset (at most GRID_MAX images) and the labels (8 bytes per image) are kept.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from difftrain.pipeline.generate import make_grid, save_image
from difftrain.pipeline.request import ImageBatch

GRID_MAX = 256  # images shown in grid.png, whatever --num is


def grid_indices(
    num: int, num_classes: int | None, per_class_blocks: bool
) -> tuple[list, int | None]:
    """Which images go in the grid, and its columns: one row per class when labels are blocks."""
    if per_class_blocks and num_classes and num % num_classes == 0:
        per = num // num_classes
        cols = max(1, min(per, GRID_MAX // num_classes))
        rows = min(num_classes, GRID_MAX)
        return [c * per + j for c in range(rows) for j in range(cols)], cols
    return list(range(min(num, GRID_MAX))), None


class SampleWriter:
    """PNG per image (`000000.png` = image 0), grid.png at the end, optional streamed .npz."""

    def __init__(
        self,
        out: Path,
        num: int,
        shape: tuple[int, int, int] | None = None,
        npz: Path | None = None,
        grid: tuple[list, int | None] = ([], None),
    ):
        self.out, self.num, self.npz = Path(out), num, npz
        self.out.mkdir(parents=True, exist_ok=True)
        self.grid_idx, self.grid_cols = set(grid[0]), grid[1]
        self.grid_order = list(grid[0])
        self.grid_images: dict[int, torch.Tensor] = {}
        self.labels: list[int] = []
        self.written = 0
        self._zip = self._member = None
        self._tmp: Path | None = None

    def _open_npz(self, c: int, h: int, w: int) -> None:
        """An .npz (a zip of .npy) whose images.npy is written batch by batch."""
        assert self.npz is not None
        self.npz.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name beside the target: a killed run never leaves a half .npz behind.
        self._tmp = self.npz.with_name(f".{self.npz.name}.{os.getpid()}.partial")
        self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open("images.npy", "w", force_zip64=True)
        header = {"descr": "|u1", "fortran_order": False, "shape": (self.num, h, w, c)}
        np.lib.format.write_array_header_2_0(self._member, header)

    def add(self, batch: ImageBatch) -> None:
        """Write one batch (uint8 N×C×H×W) and keep only what the grid needs."""
        images = batch.images
        hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        if self.npz is not None and self._zip is None:
            self._open_npz(images.shape[1], images.shape[2], images.shape[3])
        for j in range(images.shape[0]):
            pos = batch.start + j
            save_image(hwc[j], self.out / f"{pos:06d}.png")
            if pos in self.grid_idx:
                self.grid_images[pos] = images[j].clone()
        if self._member is not None:
            self._member.write(hwc.tobytes())
        if batch.labels is not None:
            self.labels.extend(batch.labels)
        self.written += images.shape[0]

    def close(self) -> None:
        """Finish grid.png and the .npz (renamed into place only when complete)."""
        shown = [self.grid_images[i] for i in self.grid_order if i in self.grid_images]
        if shown:
            grid = make_grid(torch.stack(shown), self.grid_cols)
            save_image(grid, self.out / "grid.png", min_side=256)
        if self._zip is not None:
            self._member.close()
            if self.labels:
                with self._zip.open("labels.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(self.labels, dtype=np.int64))
            self._zip.close()
            os.replace(self._tmp, self.npz)

    def abort(self) -> None:
        """Drop the partial .npz this writer created (PNGs already written stay)."""
        if self._zip is not None:
            self._zip.close()
            self._tmp.unlink(missing_ok=True)
