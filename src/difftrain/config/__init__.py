"""Typed configuration and its loading."""

from difftrain.config.load import ConfigError, dump_config, load_config
from difftrain.config.schema import Config

__all__ = ["Config", "ConfigError", "dump_config", "load_config"]
