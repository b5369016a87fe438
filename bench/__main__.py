"""`python -m bench [--quick] [name ...]`: run the benchmarks (all, or the ones named), then print
the summary table and write docs/bench.png.

Names: pickup, claim_depth, overhead, throughput, calls (storage calls per task and route in the
round-trip run), call_cost (CPU per storage call: the adapter against the bare SDK), result_latency (a result
reaching a client that waits on another instance), celery_ref,
memory, constant_time, large (a 1 GiB payload and result through storage), idle (an idle worker's
execution time and pickup), decode (the worker's fetch side: images readied a second with 1, 2 and 4
decode threads), worker (ResNet50 through the broker vs bare) and batching (ResNet50
under a trickling load with and without --max-batch-delay-ms); the last two run when named, or in
the full run. Each is also runnable alone:
`python -m bench.pickup [--quick]`. Results go to bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from . import common

MINE = ["pickup", "claim_depth", "overhead", "throughput", "calls", "call_cost", "result_latency", "celery_ref",
        "memory", "constant_time", "large", "idle", "decode"]
ALL = MINE + ["worker", "batching"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="name", help=f"benchmarks to run (default: all): {', '.join(ALL)}")
    parser.add_argument("--quick", action="store_true", help="a short run of each (about 5 minutes in all)")
    parser.add_argument("--no-plot", action="store_true", help="skip the summary and docs/bench.png")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ALL]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
    common.set_quick(args.quick)
    names = args.names or (MINE if args.quick else ALL)
    failed = []
    start = time.monotonic()
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}")
            module.main(["--quick"] if args.quick else [])
        except SystemExit as exc:
            if exc.code not in (0, None):
                failed.append(name)
        except Exception:  # noqa: BLE001 - one benchmark failing must not stop the others
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - t0:.0f} s ===", flush=True)
    if not args.no_plot:
        from . import plot

        plot.main([])
    print(f"\nall done in {time.monotonic() - start:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
