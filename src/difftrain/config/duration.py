"""Durations written the way people write them in configs: `90s`, `10m`, `2h`, `1h30m`."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}
MAX_DURATION_S = 30 * 24 * 3600.0  # a month: anything longer is a typo (10000h for 100h)


def parse_duration(text: str) -> float:
    """Seconds in `text` (one or more <number><h|m|s> parts, e.g. '1h30m'); ValueError if malformed."""
    s = str(text).strip().lower().replace(" ", "")
    parts = _PART.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '10m', '2h' or '1h30m'")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not 0 < seconds <= MAX_DURATION_S:
        raise ValueError(f"{text!r}: a duration must be > 0 and at most 720h")
    return seconds
