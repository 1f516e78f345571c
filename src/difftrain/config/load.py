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


# A config holds a few hundred values. YAML aliases can make a 339-byte file expand to
# millions (the "billion laughs"); whatever reads the result (validation, messages, dumps)
# would then see all of them. Refuse documents whose aliases expand past this many values.
MAX_YAML_VALUES = 100_000
MAX_CONFIG_BYTES = 1_000_000  # a config file is a few KB
MAX_VALUE_REPR = 200  # characters of a bad value shown in a message


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values in `node` with every alias expanded (shared subtrees counted at each use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias (a node inside itself) counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load with alias expansion bounded; a bomb raises ConfigError naming `source`.

    yaml.YAMLError (a syntax error) passes through for the caller to word.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise ConfigError(
                f"{source}: YAML aliases expand to more than {MAX_YAML_VALUES:,} values "
                "(nested '&anchor'/'*alias' references); write the values out instead"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _short_repr(value: Any) -> str:
    """repr(value) cut to MAX_VALUE_REPR characters (a bad value may be huge)."""
    text = repr(value)
    if len(text) <= MAX_VALUE_REPR:
        return text
    return f"{text[:MAX_VALUE_REPR]}... ({len(text):,} characters)"


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
            lines.append(f"{key} = {_short_repr(value)}: {msg}{extra}")
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
        value = load_yaml(raw, f"override {key.strip()!r}") if raw.strip() else None
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
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{p}: {size:,} bytes is not a config file (a config is a few KB; "
                f"at most {MAX_CONFIG_BYTES:,} bytes)"
            )
        try:
            loaded = load_yaml(p.read_text(encoding="utf-8"), str(p))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        data = loaded or {}
    return config_from_dict(apply_overrides(data, overrides or []))


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (paths as strings, tuples as lists)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
