"""`difftrain features train CONFIG`: the domain feature network used by evaluation."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors

features_app = typer.Typer(no_args_is_help=True, help="Feature networks for evaluation metrics.")


@features_app.command("train")
@handle_errors
def features_train(
    config: Path = typer.Argument(..., help="YAML config file (or a run directory)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key, e.g. --set features.epochs=5."
    ),
) -> None:
    """Train the small CNN classifier on the config's labelled data (same train/val split)."""
    from tqdm.auto import tqdm

    from difftrain.config import load_config
    from difftrain.data import load_data
    from difftrain.eval.evaluate import default_feature_net_dir
    from difftrain.eval.features import save_feature_net, train_feature_net

    cfg = load_config(config, set_)
    f = cfg.features
    train, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
    with tqdm(desc="features", unit="step", disable=not cfg.logging.progress) as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        net, info = train_feature_net(
            train, val, width=f.width, feature_dim=f.feature_dim, epochs=f.epochs,
            batch_size=f.batch_size, lr=f.lr, seed=f.seed, progress=progress,
        )  # fmt: skip
    info["data"] = cfg.data.model_dump(mode="json")
    out = Path(f.out) if f.out else default_feature_net_dir(cfg)
    path = save_feature_net(net, info, out)
    val_acc = info["val_accuracy"]
    held_out = f"val accuracy {val_acc:.3f} on {info['val_images']} held-out images"
    if val_acc is None:
        held_out = "no validation split (data.val_fraction = 0)"
    console.print(
        f"feature network: train accuracy {info['train_accuracy']:.3f}, {held_out}\n"
        f"wrote {path.name} and {path.with_suffix('.safetensors').name} to {out}"
    )
