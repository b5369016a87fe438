"""Where Azurite's CPU goes, from a V8 CPU profile (`node --cpu-prof`): self time by package and
module, so a benchmark can show what part of its storage cost is the emulator's own code.

`python -m bench.profilers.azurite FILE.cpuprofile` prints the summary of a saved profile.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

IDLE = {"(idle)"}


def area(url: str, function: str) -> str:
    """A readable place for a profile node: an Azurite module, a package, a Node.js built-in, or V8."""
    if not url:  # V8 itself ((garbage collector), (program)) or a native function
        return function if function.startswith("(") else f"(native) {function or 'unknown'}"
    if url.startswith("node:"):
        parts = url[5:].split("/")
        return "node:" + "/".join(parts[:2] if parts[0] == "internal" and len(parts) > 1 else parts[:1])
    match = re.search(r"node_modules/((?:@[^/]+/)?[^/]+)/(.*)", url)
    if not match:
        return Path(url).name
    package, rest = match.groups()
    if package == "azurite":
        parts = rest.removeprefix("dist/src/").split("/")
        return "azurite:" + "/".join(parts[:2] if len(parts) > 2 else parts[:1])
    return package


def self_times(profile: dict, window: tuple[float, float] | None = None) -> Counter:
    """Seconds of self time per area (idle left out), from the samples and their time deltas.

    `window` is (start, end) in `time.monotonic()` seconds: V8 stamps samples with the same
    CLOCK_MONOTONIC on Linux, so a benchmark can keep only the part it measured.
    """
    nodes = {node["id"]: node["callFrame"] for node in profile["nodes"]}
    seconds: Counter = Counter()
    stamp = profile["startTime"]
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"]):
        stamp += delta
        frame = nodes[node_id]
        if frame["functionName"] in IDLE or (window and not window[0] * 1e6 <= stamp <= window[1] * 1e6):
            continue
        seconds[area(frame.get("url", ""), frame["functionName"])] += max(delta, 0) / 1e6
    return seconds


def summary(path: Path, top: int = 12, windows: list[tuple[float, float]] | None = None) -> list[dict]:
    """The `top` areas by self time (within any of `windows`, if given), with their share of the busy time."""
    profile = json.loads(path.read_text())
    seconds: Counter = Counter()
    for window in windows or [None]:
        seconds.update(self_times(profile, window))
    busy = sum(seconds.values()) or 1.0
    return [{"area": name, "seconds": round(value, 2), "share": round(value / busy, 3)}
            for name, value in seconds.most_common(top)]


def newest(directory: Path) -> Path | None:
    found = sorted(directory.glob("*.cpuprofile"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: python -m bench.profilers.azurite FILE.cpuprofile (a V8 CPU profile of Azurite)", file=sys.stderr)
        return 2
    for row in summary(Path(argv[0])):
        print(f"{row['share'] * 100:5.1f} %  {row['seconds']:7.2f} s  {row['area']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
