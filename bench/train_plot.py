"""The training comparison's figure and record: validation (and smoothed training) loss of each run
`engram-memory train` wrote, in one PNG, and their metrics.json files gathered in one JSON.

    python -m bench.train_plot engram=RUN_DIR base=RUN_DIR iso=RUN_DIR [--gate GATE_DIR] --out PREFIX

writes PREFIX.json ({label: metrics, "gate_phrases": the gate command's figure}) and PREFIX_loss.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"engram": "backbone + Engram", "base": "backbone alone (iso-FLOPs)",
          "iso": "wider backbone (iso-parameters)"}


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (label, metrics) in enumerate(runs.items()):
        color = plt.get_cmap("tab10").colors[i]
        train = metrics["history"]["train"]
        k = max(1, len(train) // 50)  # mean of every k steps: the batches' noise smoothed away
        pts = [(train[j + k - 1][0], sum(v for _, v in train[j:j + k]) / k) for j in range(0, len(train) - k + 1, k)]
        ax.plot(*zip(*pts), color=color, alpha=0.3, lw=1)
        val = metrics["history"]["val"]
        ax.plot(*zip(*val), color=color, marker="o", ms=3, label=f"{LABELS.get(label, label)}: {val[-1][1]:.3f}")
        for key, ls in (("val_loss_engram_removed", ":"), ("val_loss_rows_zero", "--")):
            if key in metrics:
                what = "Engram output removed" if "removed" in key else "rows served as zeros"
                ax.axhline(metrics[key], color=color, ls=ls, lw=1, label=f"  same model, {what}: {metrics[key]:.3f}")
    first = next(iter(runs.values()))
    ax.set_ylim(min(v for m in runs.values() for _, v in m["history"]["val"]) - 0.3,
                max(m.get("val_loss_rows_zero", 0) for m in runs.values()) + 0.3 or None)
    ax.set_xlabel(f"step ({first['tokens'] // first['steps']:,} tokens each)")
    ax.set_ylabel("loss, nats per token")
    ax.set_title(f"validation loss (markers) and training loss (faint), {first['device']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="a train --out directory, labelled")
    parser.add_argument("--gate", default="", help="a `gate --out` directory: its gate_phrases.json is kept")
    parser.add_argument("--out", required=True, help="prefix of the JSON and PNG written")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, run = spec.partition("=")
        if not sep or not (Path(run) / "metrics.json").is_file():
            parser.error(f"{spec!r}: expected LABEL=RUN_DIR with a metrics.json in RUN_DIR")
        runs[label] = json.loads((Path(run) / "metrics.json").read_text())
    record = dict(runs)
    if args.gate:
        record["gate_phrases"] = json.loads((Path(args.gate) / "gate_phrases.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    plot(runs, out.with_name(out.name + "_loss.png"))
    print(f"wrote {out.with_suffix('.json')}, {out.with_name(out.name + '_loss.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
