"""JSON from strangers: what `json.loads` accepts, minus what breaks other parsers or the broker.

Python reads NaN and Infinity, turns a number too large for a float (`1e999`) into infinity, and
keeps an integer of any length, none of which JavaScript or Go can read as a number, so a worker
in another language would choke on params holding them; and nesting deep enough raises
RecursionError, not ValueError. All of these become the ValueError every caller already turns
into a 400.
"""

from __future__ import annotations

import json
import math


def _refuse(constant: str):
    raise ValueError(f"{constant} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _integer(text: str) -> int:
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"the number {text[:40]}… is too large") from None
    return value


def loads(text: str | bytes):
    try:
        return json.loads(text, parse_constant=_refuse, parse_float=_finite, parse_int=_integer)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
