"""A search space file: one entry per config key, each a float (log or linear), int or choice.

```yaml
optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
train.batch_size: {type: int, low: 16, high: 64, step: 16}
model.preset: {type: categorical, choices: [unet-tiny, unet-small]}
```
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from difftrain.config import ConfigError, load_config
from difftrain.config.load import MAX_CONFIG_BYTES, load_yaml

TYPES = ("float", "int", "categorical")
KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
        "categorical": {"choices"}}  # fmt: skip


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial):
        """The trial's value for this key (Optuna's suggest_* API)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def examples(self) -> list:
        """Values that must all make a valid config (checked before any trial runs)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


def override(key: str, value) -> str:
    """A --set override for a value (JSON is YAML: strings quoted, null, true, numbers)."""
    return f"{key}={json.dumps(value)}"


def _number(where: str, name: str, value, integer: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or (integer and value != int(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{where}: '{name}' must be {kind}, got {value!r}")
    return value


def _param(where: str, key: str, spec) -> Param:
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ConfigError(
            f"{where}: give a mapping with type: {' | '.join(TYPES)} "
            "(e.g. {type: float, low: 1.0e-4, high: 1.0e-2, log: true})"
        )
    kind = spec["type"]
    unknown = set(spec) - KEYS[kind] - {"type"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; a {kind} takes "
                          f"{sorted(KEYS[kind])}")  # fmt: skip
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list")
        if not all(isinstance(c, (str, int, float, bool)) or c is None for c in choices):
            raise ConfigError(f"{where}: choices must be strings, numbers, booleans or null")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a {kind} needs 'low' and 'high'")
    low, high = (_number(where, n, spec[n], integer) for n in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false")
    if not low < high:
        raise ConfigError(f"{where}: 'low' ({low}) must be below 'high' ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, integer)
        if step <= 0 or log:
            raise ConfigError(f"{where}: 'step' must be positive and cannot go with log: true")
    return Param(key, kind, low, high, log, step)


def load_space(path: Path, config: Path | None = None, overrides: list[str] | None = None):
    """The parameters of a space file; each key and its extreme values checked against `config`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"--space {path}: cannot read it ({err.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--space {path}: {len(raw):,} bytes; a space file is a few lines")
    try:
        data = load_yaml(raw.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise ConfigError(f"--space {path}: not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--space {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--space {path}: expected a mapping of config keys to ranges, e.g. "
                          "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}")  # fmt: skip
    params = []
    for key, spec in data.items():
        where = f"--space {path}: {key}"
        if not isinstance(key, str) or key.startswith("train.run_dir"):
            raise ConfigError(f"{where}: not a searchable config key")
        params.append(_param(where, key, spec))
    for p in params:  # a typo or an out-of-bounds value fails now, not in trial 7
        for value in p.examples():
            try:
                load_config(config, [*(overrides or []), override(p.key, value)])
            except ConfigError as err:
                raise ConfigError(f"--space {path}: {p.key} = {value!r}: {err}") from None
    return params
