"""`python -m bench.constant_time`: does the broker's key check take as long for a guess wrong in its
last character as for one wrong in its first? Prints the ratio (late miss / early miss, min of many
interleaved rounds) for `broker.auth.matches` on a 256 KB key, beside a plain `==` as the control
(which the harness must be able to catch), and the same two misses over HTTP against a dev host.

A timing on a shared machine is a measurement, not a test: the suite checks how the comparison is
built (tests/unit/test_auth_compare.py); this prints what it costs.
"""

from __future__ import annotations

import secrets
import statistics
import time

from broker import auth

from . import common


def timing_ratio(compare, key: str, rounds: int = 60, calls: int = 20) -> float:
    early, late = "#" + key[1:], key[:-1] + "#"
    best = {early: float("inf"), late: float("inf")}
    for _ in range(rounds):
        for guess in (early, late):  # interleaved, so load on the machine hits both alike
            started = time.perf_counter_ns()
            for _ in range(calls):
                compare(guess, (key,))
            best[guess] = min(best[guess], time.perf_counter_ns() - started)
    return best[late] / best[early]


def naive(given: str, keys: tuple[str, ...]) -> bool:
    return any(given == key for key in keys)


def http_medians(rounds: int) -> dict[str, float]:
    """Median ms of /stats with a worker key wrong in its first and in its last character."""
    import requests

    key = common.WORKER_KEY
    with common.Stack() as stack:
        url = stack.url
        guesses = {"first char wrong": "#" + key[1:], "last char wrong": key[:-1] + "#"}
        times: dict[str, list[float]] = {label: [] for label in guesses}
        with requests.Session() as session:
            for _ in range(rounds):
                for label, guess in guesses.items():
                    answer = session.get(f"{url}/stats", headers={"Authorization": f"Bearer {guess}"})
                    times[label].append(answer.elapsed.total_seconds())
    return {label: round(statistics.median(values) * 1000, 2) for label, values in times.items()}


def run(quick: bool = False) -> dict:
    key = secrets.token_urlsafe(200_000)[:256 * 1024]
    result = {"naive_compare_ratio": round(timing_ratio(naive, key), 2),
              "broker_compare_ratio": round(timing_ratio(auth.matches, key), 3)}
    result.update({f"http_median_ms_{k.replace(' ', '_')}": v for k, v in http_medians(30 if quick else 100).items()})
    return result


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args("constant_time", argv)
    common.note_load("constant_time")
    result = run(args.quick)
    for name, value in result.items():
        print(f"{name:34} {value}")
    common.save("constant_time", result)
    return 0


def summary(d: dict) -> list[list]:
    """This benchmark's row of the summary table (bench.plot)."""
    ratio = d["broker_compare_ratio"]
    return [["8 keys", "key check: late miss / early miss, 256 KB key", f"{ratio}x", f"plain == {d['naive_compare_ratio']}x",
             ratio, "0.67-1.5", "PASS" if 0.67 < ratio < 1.5 else "FAIL"]]


if __name__ == "__main__":
    raise SystemExit(main())
