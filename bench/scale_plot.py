"""The PNGs of `bench scale`: rows/s and latency per table size, and the cold-row phases against fio."""
from __future__ import annotations

import json
from pathlib import Path


def replot(paths: list[str], out: str) -> int:
    """One PNG from earlier runs' JSON: the cold-row format (this bench's now: rows with "bench" =
    scale-cold / scale-trace / scale-fio) all on one figure, or the older table-size sweeps, a series each."""
    runs = {}
    for path in paths:
        try:
            runs[path] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--replot {path}: {e}") from None
        if not isinstance(runs[path], list) or not runs[path] or not all(isinstance(r, dict) for r in runs[path]):
            raise ValueError(f"--replot {path}: not the JSON rows of a bench scale run")
    cold = {p for p, rows in runs.items() if all(str(r.get("bench", "")).startswith("scale-") for r in rows)}
    if cold and cold != set(runs):
        raise ValueError(f"--replot: {sorted(cold)} are cold-row runs and {sorted(set(runs) - cold)} table-size "
                         "sweeps (an older format): draw them separately")
    png = Path(out).with_suffix(".png")
    if cold:  # each run's fio curve its own line: the disk drifts between runs
        plot_cold([{**r, "run": Path(p).name} for p, rows in runs.items() for r in rows], png)
    else:
        series = {}
        for path, rows in runs.items():
            if any("service_rows_per_s" not in r for r in rows):
                raise ValueError(f"--replot {path}: not the JSON rows of a bench scale run")
            note = ", huge pages" if any(r.get("huge_pages") for r in rows) or "hugepages" in path else ", 4 KiB pages"
            series[f"{Path(path).name} ({rows[0]['date']}{note})"] = sorted(rows, key=lambda r: r["table_gib"])
        plot(series, png)
    print(f"wrote {png}")
    return 0


def plot(series: dict[str, list[dict]], path: Path) -> None:
    """series: {label: rows of one run}; every run on the same axes, the setup in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    first = next(iter(series.values()))[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (label, rows) in enumerate(series.items()):
        sizes = [r["table_gib"] for r in rows]
        color = f"C{i}"
        a.plot(sizes, [r["service_rows_per_s"] for r in rows], "o-", color=color, label=label)
        b.plot(sizes, [r["p50_ms"] for r in rows], "o-", color=color, label=f"p50, {label}")
        b.plot(sizes, [r["p99_ms"] for r in rows], "s:", color=color, label=f"p99, {label}")
    from matplotlib.ticker import FuncFormatter
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.axvline(first["ram_gib"], color="gray", ls=":", label=f"RAM ({first['ram_gib']:.0f} GiB)" if ax is a else None)
        ax.set_xlabel("table size, GiB (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a.set_ylabel("service rows/s (device-cache misses)")
    b.set_ylabel("time per step's lookup, ms")
    fig.suptitle(f"engram-memory bench scale: tables of growing size from a cold page cache; {first['row_bytes']} B "
                 f"rows, {first['clients']} clients x steps of 64 tokens, {first['server_workers']} server processes, "
                 f"1% device cache; {first['machine']}, {first['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cold(rows: list[dict], path: Path) -> None:
    """Left: reads/s against queue depth, fio's curve and each cold phase at the depth it kept.
    Right: p50 and p99 per request of every phase (cold and trace)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fio = sorted((r for r in rows if r["bench"] == "scale-fio"), key=lambda r: r["iodepth"])
    fio_runs = sorted({r.get("run", "") for r in fio})
    phases = [r for r in rows if r["bench"] in ("scale-cold", "scale-trace")]
    if not phases:
        return
    first = phases[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 7))
    for i, run in enumerate(fio_runs):
        curve = [r for r in fio if r.get("run", "") == run]
        a.plot([r["fio_queue_depth"] for r in curve], [r["fio_iops"] for r in curve], ".-", color=str(0.55 * i),
               label=f"fio 4 KiB random reads, O_DIRECT, {curve[-1].get('fio_engine', 'engine not recorded')}"
                     f"{', ' + run if run else ''}; x = measured queue depth")
    modes = sorted({r["read_mode"] for r in phases})
    for r in phases:
        if r["bench"] != "scale-cold":
            continue
        color = f"C{modes.index(r['read_mode'])}"
        marker = "o" if r["request_rows"] <= 8192 else "s"
        a.plot(r["queue_depth"], r["rows_per_s"], marker, color=color, ms=9,
               label=f"service, {r['read_mode']}, {r['request_rows']:,}-row requests" + (
                     f" ({r['fio_ratio']:.0%} of fio at its depth)" if "fio_ratio" in r else ""))
    a.set_xscale("log", base=2)
    a.set_xlabel("reads in flight at the disk (mean, /proc/diskstats)")
    a.set_ylabel("cold rows/s (service) or reads/s (fio)")
    a.grid(alpha=0.3)
    a.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.14), ncol=2)  # below: the points fill the axes
    labels = [f"{r['bench'][6:]}\n{r['read_mode']}\n{r['request_rows'] // 1024}k" for r in phases]
    x = range(len(phases))
    b.bar([i - 0.2 for i in x], [r["p50_ms"] for r in phases], 0.4, label="p50")
    b.bar([i + 0.2 for i in x], [r["p99_ms"] for r in phases], 0.4, label="p99")
    b.set_xticks(list(x), labels, fontsize=6)
    b.set_yscale("log")
    b.set_ylabel("time per request, ms")
    b.grid(alpha=0.3, axis="y")
    b.legend(fontsize=7)
    fig.suptitle(f"engram-memory bench scale: a {first['table_gib']:g} GiB table ({first['table_gib'] / first['ram_gib']:.2f}x "
                 f"RAM) from a cold page cache\ncold = every row on an untouched page, trace = Brown text through a 1% "
                 f"device cache; {first['server_workers']} server processes; {first['machine']}, {first['date']}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
