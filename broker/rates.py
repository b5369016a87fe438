"""A request rate as app settings write it: `60/min`, `10/s`, `1000/hour` (BROKER_RATE_LIMIT)."""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


@dataclass(frozen=True)
class Rate:
    count: int
    period: int  # seconds

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """'60/min', '10/s', '1000/hour'; None for '' (no limit). ValueError for anything else."""
        if not text:
            return None
        match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*([a-z]+)\s*", text.lower())
        if not match or match.group(2) not in UNITS or not 1 <= int(match.group(1)) <= 50_000:
            raise ValueError("must be a count and a unit, like 60/min (1 to 50000 per s, min or hour)")
        return cls(int(match.group(1)), UNITS[match.group(2)])
