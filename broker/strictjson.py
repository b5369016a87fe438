"""JSON from strangers: what `json.loads` accepts, minus what breaks other parsers or the broker.

Python reads NaN and Infinity, which JavaScript and Go refuse, so a worker in another language
would choke on params holding them; and nesting deep enough raises RecursionError, not ValueError.
Both become the ValueError every caller already turns into a 400.
"""

from __future__ import annotations

import json


def _refuse(constant: str):
    raise ValueError(f"{constant} is not valid JSON")


def loads(text: str | bytes):
    try:
        return json.loads(text, parse_constant=_refuse)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
