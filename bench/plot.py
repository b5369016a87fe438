"""`python -m bench.plot`: the summary table of every benchmark's latest JSON (bench/results/) and
one figure, docs/bench.png. Benchmarks that have not been run are left out (or marked)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from . import common, throughput

PNG = Path(__file__).resolve().parent.parent / "docs" / "bench.png"
DOC = PNG.parent / "performance.md"  # its Summary section
BEGIN, END = "<!-- bench:table:begin -->", "<!-- bench:table:end -->"


def load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# (results file, the benchmark module that made it, its function giving the summary rows), in table order
SOURCES = [("pickup", "pickup", "summary"), ("claim_depth", "claim_depth", "summary"),
           ("overhead", "overhead", "summary"), ("overhead-compare", "overhead", "summary_compare"),
           ("throughput", "throughput", "summary"), ("throughput-compare", "throughput", "summary_compare"),
           ("worker", "worker", "summary"), ("worker-pinned", "worker", "summary_pinned"),
           ("celery_ref", "celery_ref", "summary"), ("memory", "memory", "summary"),
           ("constant_time", "constant_time", "summary"), ("large", "large", "summary"), ("idle", "idle", "summary"),
           ("calls", "calls", "summary"), ("calls-compare", "calls", "summary_compare"),
           ("call_cost", "call_cost", "summary"), ("batching", "batching", "summary"),
           ("result_latency", "result_latency", "summary"), ("decode", "decode", "summary")]


def summary_rows() -> list[list]:
    """[benchmark, figure, value, reference, ratio, goal, verdict] for every result on disk: each
    benchmark says which rows its own results make."""
    rows = []
    for results, module, function in SOURCES:
        if (d := load(results)):
            rows += getattr(importlib.import_module(f"bench.{module}"), function)(d)
    return rows


HEADER = ["benchmark", "figure", "value", "reference (same run)", "ratio", "goal", "result"]


def markdown_table(rows: list[list]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(common._cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot(path: Path = PNG) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(20, 9))
    axes = axes.ravel()
    for ax in axes:
        ax.grid(alpha=0.3)

    ax = axes[0]
    if (d := load("pickup")):
        cases = list(d["cases"])
        x = range(len(cases))
        ax.bar([i - 0.2 for i in x], [d["cases"][c]["p50_ms"] for c in cases], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [d["cases"][c]["p95_ms"] for c in cases], 0.4, label="p95")
        ax.axhline(100, color="C0", ls="--", lw=1, label="goal p50")
        ax.axhline(300, color="C1", ls="--", lw=1, label="goal p95")
        ax.axhline(d["reference_receive_p50_ms"], color="gray", ls=":", lw=1, label="bare receive")
        ax.set_xticks(list(x), cases)
        ax.legend(fontsize=8)
    ax.set_title("1. Pickup latency (ms)")

    ax = axes[1]
    if (d := load("claim_depth")):
        depths = d["depths"]
        ax.plot(depths, [d["results"][str(k)]["queue_claim"]["p50_ms"] for k in depths], "o-", label="queue claim (this)")
        if "bare_receive" in d["results"][str(depths[0])]:
            ax.plot(depths, [d["results"][str(k)]["bare_receive"]["p50_ms"] for k in depths], "^--",
                    label="bare SDK receive (Azurite)")
        if "legacy_list_and_lease" in d["results"][str(depths[0])]:  # results from before 2026-12-02
            ax.plot(depths, [d["results"][str(k)]["legacy_list_and_lease"]["p50_ms"] for k in depths], "s-",
                    label="list inbox + lease blob (old)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("queue depth")
        ax.legend(fontsize=8)
    ax.set_title("2. Claim p50 vs depth (ms)")

    ax = axes[2]
    if (d := load("overhead")):
        ax.bar(["8 bare\nSDK ops"], [d["bare_p50_ms"]], color="gray")
        bottom = 0
        for i, (route, ms) in enumerate(d["broker"]["routes_p50_ms"].items()):
            ax.bar(["HTTP cycle"], [ms], bottom=bottom, label=route, color=f"C{i}")
            bottom += ms
        ax.axhline(d["bare_p50_ms"] * 1.5, color="red", ls="--", lw=1, label="goal 1.5x bare")
        ax.legend(fontsize=8)
    ax.set_title("3. Broker overhead, p50 (ms)")

    ax = axes[3]
    if (d := load("throughput")):
        for sleep in sorted({r["sleep_ms"] for r in d["results"]}):
            rs = [r for r in throughput.own_results(d) if r["sleep_ms"] == sleep]
            ax.plot([r["workers"] for r in rs], [r["tasks_per_s"] for r in rs], "o-", label=f"sleep_ms {sleep}")
        if (c := load("throughput-compare")):
            for sleep in sorted({r["sleep_ms"] for r in c["results"]}):
                rs = [r for r in c["results"] if r["sleep_ms"] == sleep and r.get("host") == "variant"]
                ax.plot([r["workers"] for r in rs], [r["tasks_per_s"] for r in rs], "x:",
                        label=f"{c.get('variant_label', 'scratch copy')}, sleep_ms {sleep} (same run)")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("echo workers")
        ax.set_xticks([1, 2, 4])
        ax.legend(fontsize=8)
    ax.set_title("4. Throughput, 8 clients (tasks/s)")

    ax = axes[4]
    if (d := load("worker")) and d.get("rows"):
        rows = d["rows"]
        spots = list(range(len(rows)))
        ax.bar([x - 0.2 for x in spots], [r["ratio"] for r in rows], width=0.4, label="img/s ratio")
        ax.bar([x + 0.2 for x in spots], [r.get("cpu_ratio_without_azurite") or 0 for r in rows], width=0.4,
               color="C1", label="CPU ratio, Azurite left out")
        ax.set_xticks(spots, [str(r["batch"]) for r in rows])
        ax.axhline(0.85, color="red", ls="--", lw=1, label="goal 0.85")
        ax.set_xlabel("batch")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("5. ResNet50 via broker / bare")

    ax = axes[5]
    if (d := load("celery_ref")):
        ax.bar(["Celery+Redis", "broker+Azurite"], [d["celery_redis"]["p50_ms"], d["broker"]["p50_ms"]],
               color=["C2", "C0"])
    ax.set_title("6. Round trip p50 (ms)")

    ax = axes[6]
    if (d := load("memory")):
        samples = d["host"]["samples"]
        ax.plot([t for t, _ in samples], [v for _, v in samples], label="dev host RSS")
        ax.axhline(200, color="red", ls="--", lw=1, label="goal 200 MiB")
        ax.set_xlabel("seconds under load")
        ax.set_ylim(0, 220)
        ax.legend(fontsize=8)
    ax.set_title("7. Dev host RSS under load (MiB)")

    ax = axes[7]
    if (d := load("memory")) and d.get("resnet50_worker"):
        w = d["resnet50_worker"]
        ax.bar(["bare handler", "worker"], [w["bare_handler_peak_rss_mib"] or 0, w["peak_rss_mib"]], color=["gray", "C0"])
        ax.axhline(1536, color="red", ls="--", lw=1, label="goal 1.5 GiB")
        ax.legend(fontsize=8)
    ax.set_title("7. ResNet50 batch 16 peak RSS (MiB)")

    fig.suptitle("Benchmarks (python -m bench); every figure is measured against a reference in the same run")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def update_doc(rows: list[list], path: Path = DOC) -> None:
    """Replace the table between the markers in docs/performance.md, if it has them."""
    try:
        text = path.read_text()
    except OSError:
        return
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(f"{head}{BEGIN}\n{markdown_table(rows)}\n{END}{tail}")
        print(f"updated the table in {path}")


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__).parse_args(argv)
    rows = summary_rows()
    if not rows:  # a fresh checkout: keep the table the docs have
        print(f"no benchmark results in {common.RESULTS}: run a benchmark first (python -m bench)", file=sys.stderr)
        return 1
    common.table("Summary", HEADER, rows)
    plot()
    update_doc(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
