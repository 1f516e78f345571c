"""`difftrain data ...`: look at a dataset before training on it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from difftrain.cli.common import console, handle_errors

data_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _config(target: Path, overrides: list[str]):
    from difftrain.config import load_config
    from difftrain.data.inspect import guess_source

    is_config = target.suffix in (".yaml", ".yml") or (target / "config.yaml").is_file()
    if is_config:
        return load_config(target, overrides)
    base = [f"data.source={guess_source(target)}", f"data.path={target}"]
    return load_config(None, base + list(overrides))


def _table(title: str, rows: dict, key: str = "value", value: str = "count") -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(key)
    t.add_column(value, justify="right")
    for k, v in rows.items():
        t.add_row(str(k), str(v))
    return t


def render(r: dict) -> None:
    """The report as rich tables."""
    bad = r["bad_files"]
    summary = {
        "source": f"{r['source']} ({r['path']})",
        "images": r["images"],
        "bad files": f"{bad['bad']} of {bad['total']} ({bad['rate']:.1%})",
        "distinct sizes": r["distinct_sizes"],
        "width min/median/max": "/".join(
            str(r["width"].get(k, "-")) for k in ("min", "median", "max")
        ),
        "height min/median/max": "/".join(
            str(r["height"].get(k, "-")) for k in ("min", "median", "max")
        ),
        "captioned": f"{r['captions']['captioned']} ({r['captions']['coverage']:.1%})",
        "caption words min/mean/max": "/".join(
            str(r["captions"]["words"].get(k, "-")) for k in ("min", "mean", "max")
        ),
        "duplicate groups (extra copies)": "{groups} ({extra_copies})".format(**r["duplicates"]),
        "train / val images": f"{r['train_images']} / {r['val_images']}",
        f"steps per epoch (batch {r['batch_size']})": r["steps_per_epoch"],
        "in-memory size": f"{r['memory_bytes_in_memory_loader'] / 2**20:.1f} MiB",
    }
    console.print(_table("dataset", summary, "what", "value"))
    console.print(_table(f"sizes (w x h), top {len(r['sizes'])}", r["sizes"], "size"))
    console.print(_table("modes", r["modes"], "mode"))
    if r["classes"]:
        console.print(_table("classes", r["classes"], "class"))
    if bad["by_reason"]:
        console.print(_table("bad files by reason", bad["by_reason"], "reason"))
        for f in bad["files"][:10]:
            console.print(f"  {f['reason']}: {f['path']}  {f['detail']}", highlight=False)
    if r.get("buckets"):
        rows = {
            f"{b['width']}x{b['height']}": f"{b['images']} images, {b['batches']} batches"
            for b in r["buckets"]
        }
        console.print(_table("buckets", rows, "bucket", "images, full batches"))
    for group in r["duplicates"]["examples"]:
        console.print(f"  duplicates: {', '.join(group[:4])}", highlight=False)


@data_app.command("inspect")
@handle_errors
def inspect(
    target: Path = typer.Argument(
        ..., help="A data folder/file, a YAML config or a run directory."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Default: train.batch_size."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config key, e.g. --set data.resolution=64."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Read image headers only (misses truncation)."
    ),
) -> None:
    """Image count, sizes, modes, classes, captions, duplicates, bad files, steps per epoch."""
    from difftrain.data.checks import check_data
    from difftrain.data.inspect import inspect_data

    if not target.exists():
        from difftrain.config import ConfigError

        raise ConfigError(
            f"{target}: does not exist; pass a data folder/file, a config or a run directory"
        )
    cfg = _config(target, set_)
    check_data(cfg.data)
    report = inspect_data(
        cfg.data, batch_size or cfg.train.batch_size, seed=cfg.train.seed, full=not quick
    )
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        render(report)
