"""The token mode's hit-rate plots (one PNG per corpus), drawn from `bench hit-rate` rows."""
from __future__ import annotations

from pathlib import Path


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, PercentFormatter
    layers = sorted({r["layer"] for r in rows})
    fig, axes = plt.subplots(1, len(layers), figsize=(6.5 * len(layers), 5.6), squeeze=False)
    handles = {}
    for ax, layer in zip(axes[0], layers):
        mine = [r for r in rows if r["layer"] == layer]
        policies = list(dict.fromkeys(r["policy"] for r in mine if r["policy"] != "infinite"))
        colors = plt.get_cmap("tab20").colors                 # more policies than the default 10 colors
        for i, policy in enumerate(policies):
            pts = sorted((r["cache_fraction"], r["hit_rate"]) for r in mine if r["policy"] == policy)
            color = "k" if policy == "belady" else colors[(2 * i) % 20 + (2 * i) // 20]
            ls = "--" if policy.startswith("rowcache") else "-"  # the real cache dashed, the ideal solid
            label = f"{policy}: 11x the rows (device + host)" if policy.startswith("two-tier") else policy
            line, = ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], ls, color=color, marker="o",
                            ms=3, label=label)
            handles[label] = line
        ceiling = next(r["hit_rate"] for r in mine if r["policy"] == "infinite")
        handles["infinite cache"] = ax.axhline(100 * ceiling, color="gray", ls=":", label="infinite cache")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
        ax.yaxis.set_major_formatter(PercentFormatter())
        ax.set_xlabel("cache size, % of the layer's table")
        ax.set_ylabel("hit rate per row access")
        ax.set_title(f"{mine[0]['corpus']}, layer {layer}, {mine[0]['tokens']:,} tokens")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", bbox_to_anchor=(0.5, 0.045), ncol=4,
               fontsize=7, frameon=False)
    fig.text(0.5, 0.012, "belady: the optimum for one cache of that size; two-tier holds 11x the rows, so it "
             "can exceed it", ha="center", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.19, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(path: str) -> int:
    import json
    rows = json.loads(Path(path).read_text())
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        png = Path(path).with_name(f"{Path(path).stem}_{Path(corpus).stem}.png")
        plot([r for r in rows if r["corpus"] == corpus], png)
        print(f"wrote {png}")
    return 0
