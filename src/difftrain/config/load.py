"""Load a Config from YAML plus `section.key=value` overrides, with errors that name the fix."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from difftrain.config.schema import Config


class ConfigError(ValueError):
    """Bad configuration input; the message names the key, the value and what is allowed."""


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at a location such as ('optim',)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def format_validation_error(err: ValidationError, data: dict) -> str:
    """One line per problem: `key = value: what is wrong (allowed: ...)`."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'? " if close else ""
            lines.append(f"{key}: unknown key. {hint}Allowed here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        expected = e.get("ctx", {}).get("expected")
        extra = f" (allowed: {expected})" if expected and "expected" not in msg else ""
        if isinstance(value, dict):  # a section-level check: the message names its keys
            lines.append(f"{key}: {msg}")
        else:
            lines.append(f"{key} = {value!r}: {msg}{extra}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'optim.lr=2e-4' into (['optim', 'lr'], 2e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '=': write it as section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override {text!r}: the key must be section.key, e.g. optim.lr=2e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `a.b.c=value` into a nested dict (creating sections as needed)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict) -> Config:
    """Validate a plain dict into a Config or raise ConfigError naming each bad key."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, data)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML at `path` (or start from defaults), apply overrides and validate."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if p.is_dir() and (p / "config.yaml").is_file():
            p = p / "config.yaml"  # a run directory stands for its resolved config
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist: pass a YAML file or run dir")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded or {}
    return config_from_dict(apply_overrides(data, overrides or []))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (paths as strings, tuples as lists)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
