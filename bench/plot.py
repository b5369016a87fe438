"""`python -m bench.plot`: the summary table of every benchmark's latest JSON (bench/results/) and
one figure, docs/bench.png. Benchmarks that have not been run are left out (or marked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import common

PNG = Path(__file__).resolve().parent.parent / "docs" / "bench.png"
DOC = PNG.parent / "performance.md"  # its Summary section
BEGIN, END = "<!-- bench:table:begin -->", "<!-- bench:table:end -->"


def load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def own_results(throughput: dict) -> list[dict]:
    """The throughput results of this checkout's broker (a compare run holds the other host's too)."""
    return [r for r in throughput["results"] if r.get("host", "broker") == "broker"]


def summary_rows() -> list[list]:
    """[benchmark, figure, value, reference, ratio, goal, verdict] for every result on disk."""
    rows = []
    if (d := load("pickup")):
        ref = d["reference_receive_p50_ms"]
        for case, r in d["cases"].items():
            rows.append(["1 pickup", f"{case}: p50 / p95 ms", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}",
                         f"bare receive {ref:.1f} ms", r["p50_over_ref"], "p50<=100, p95<=300", r["goal"]])
        same = d["cases"].get("same instance")
        if same:
            rows.append(["1 pickup", "same instance: p50 ms (stretch)", f"{same['p50_ms']:.1f}", "", "", "p50<=30",
                         same["stretch_p50_30ms"]])
    if (d := load("claim_depth")):
        base = d["results"][str(d["depths"][0])]
        for depth in d["depths"][1:]:
            r = d["results"][str(depth)]
            rows.append(["2 claim depth", f"queue claim p50, depth {depth} / depth {d['depths'][0]}",
                         f"{r['queue_claim']['p50_ms']:.1f} ms", f"{base['queue_claim']['p50_ms']:.1f} ms",
                         r["queue_ratio_vs_30"], "<=1.3", r["goal"]])
            if "bare_receive" in r:
                own, own30 = (x["queue_claim"]["p50_ms"] - x["bare_receive"]["p50_ms"] for x in (r, base))
                rows.append(["2 claim depth", f"broker's own part (getnexttask - bare receive), depth {depth} / "
                             f"{d['depths'][0]}", f"{own:.1f} ms", f"{own30:.1f} ms", common.ratio(own, own30),
                             "<=1.3", common.verdict(common.ratio(own, own30), 1.3)])
                rows.append(["2 claim depth", f"bare SDK receive p50 (Azurite floor), depth {depth} / {d['depths'][0]}",
                             f"{r['bare_receive']['p50_ms']:.1f} ms", f"{base['bare_receive']['p50_ms']:.1f} ms",
                             r["bare_receive_ratio_vs_30"], "", ""])
            rows.append(["2 claim depth", f"list+lease (old design) p50, depth {depth} / {d['depths'][0]}",
                         f"{r['legacy_list_and_lease']['p50_ms']:.1f} ms",
                         f"{base['legacy_list_and_lease']['p50_ms']:.1f} ms", r["legacy_ratio_vs_30"], "", ""])
    for name, label in (("overhead", "broker"), ("overhead-compare", "variant")):
        if (d := load(name)) and label in d:
            what = "broker" if label == "broker" else d.get("variant_label", "scratch copy")
            rows.append(["3 overhead", f"HTTP cycle / 8 bare SDK ops, SDK tuned ({what})",
                         f"{d[label]['cycle_p50_ms']:.1f} ms", f"{d['bare_p50_ms']:.1f} ms", d[label]["ratio"],
                         "<=1.5 (stretch 1.2)", d[label]["goal"]])
            if "bare_default_sdk_p50_ms" in d:
                r = d[label]["ratio_vs_sdk_defaults"]
                rows.append(["3 overhead", f"HTTP cycle / 8 bare SDK ops, SDK defaults ({what})",
                             f"{d[label]['cycle_p50_ms']:.1f} ms", f"{d['bare_default_sdk_p50_ms']:.1f} ms", r,
                             "<=1.5 (stretch 1.2)", common.verdict(r, 1.5) + (" (stretch too)" if r <= 1.2 else "")])
    if (d := load("throughput")):
        for r in own_results(d):
            rows.append(["4 throughput", f"{r['workers']} worker(s), sleep_ms {r['sleep_ms']}",
                         f"{r['tasks_per_s']} tasks/s", "1 worker", r["scaling_vs_1_worker"], "report",
                         r["saturates"]])
    if (d := load("throughput-compare")):
        pairs = {}
        for r in d["results"]:
            pairs.setdefault((r["workers"], r["sleep_ms"]), {})[r["host"]] = r
        gains = sorted(p["broker"]["tasks_per_s"] / p["variant"]["tasks_per_s"] for p in pairs.values()
                       if "variant" in p and "broker" in p and p["variant"]["tasks_per_s"])
        cpu = sorted(p["broker"]["cpu_ms_per_task"]["dev host"] / p["variant"]["cpu_ms_per_task"]["dev host"]
                     for p in pairs.values() if "variant" in p and "broker" in p)
        if gains:
            label = d.get("variant_label", "scratch copy")
            rows.append(["4 throughput", f"broker / {label}, tasks/s (median of {len(gains)} configs)",
                         f"{len(gains)} pairs", f"{label}, same run", round(gains[len(gains) // 2], 3), "report",
                         f"host CPU/task x{cpu[len(cpu) // 2]:.2f}"])
    if (d := load("worker")):
        from .worker import cpu_shares

        for r in d.get("rows", []):
            rows.append(["5 worker", f"ResNet50 batch {r['batch']} through the broker / bare",
                         f"{r['broker_images_per_s']} img/s", f"{r['bare_images_per_s']} img/s", r["ratio"], ">=0.85",
                         common.verdict(r["ratio"], 0.85, higher_is_better=True)])
        for r in d.get("rows", []):
            if r.get("steady_ratio"):
                rows.append(["5 worker", f"batch {r['batch']}, steady state (pipeline fill and drain left out)",
                             f"{r['steady_images_per_s']} img/s", f"{r['bare_images_per_s']} img/s", r["steady_ratio"],
                             "report", ""])
        for r in d.get("rows", []):
            if "cpu_s_per_image_by_process" in r:
                shares = cpu_shares(r["bare_cpu_s_per_image"], r["cpu_s_per_image_by_process"])
                rows.append(["5 worker", f"batch {r['batch']}, CPU per image: bare / (worker + dev host), "
                             "Azurite's share left out",
                             f"{sum(r['cpu_s_per_image_by_process'][p] for p in ('worker', 'devhost')) * 1000:.1f} ms",
                             f"bare {r['bare_cpu_s_per_image'] * 1000:.1f} ms",
                             shares["cpu_ratio_without_azurite"], ">=0.85",
                             common.verdict(shares["cpu_ratio_without_azurite"], 0.85, higher_is_better=True)])
    if (d := load("celery_ref")):
        rows.append(["6 peer", "round trip: broker / Celery+Redis", f"{d['broker']['p50_ms']:.1f} ms",
                     f"{d['celery_redis']['p50_ms']:.1f} ms", d["ratio_broker_over_celery"], "report", ""])
    if (d := load("memory")):
        h = d["host"]
        rows.append(["7 memory", "dev host peak RSS under load", f"{h['peak_rss_mib']:.0f} MiB",
                     f"idle {h['idle_rss_mib']:.0f} MiB", h["peak_over_idle"], "<=200 MiB",
                     common.verdict(h["peak_rss_mib"], 200)])
        rows.append(["7 memory", f"dev host growth, 2nd half of {h['soak_s']} s soak",
                     f"{h['slope_mib_per_min_second_half']} MiB/min", "middle of soak", h["end_over_middle"],
                     "flat (<=1 MiB/min)", common.verdict(h["slope_mib_per_min_second_half"], 1.0)])
        if (w := d.get("resnet50_worker")):
            rows.append(["7 memory", "ResNet50 worker peak RSS, batch 16", f"{w['peak_rss_mib']:.0f} MiB",
                         f"bare handler {w['bare_handler_peak_rss_mib']} MiB", w["worker_over_bare"], "<=1536 MiB",
                         common.verdict(w["peak_rss_mib"], 1536)])
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
            rs = [r for r in own_results(d) if r["sleep_ms"] == sleep]
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
    rows = summary_rows()
    common.table("Summary", HEADER, rows)
    plot()
    update_doc(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
