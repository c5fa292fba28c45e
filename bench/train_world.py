"""`engram-memory bench train-world`: `engram-memory train` at several world sizes on the same tokens.

Every world size trains the same model from the same seed on the same global batches (rank r of W
takes its 1/W slice of each), so the losses must agree step for step: the bench reports the largest
relative difference from the first world size against the CPU test's tolerance (2e-5: float32
rounding of a different summation order). Then each world size's median step time at the same
global batch, its ratio to the first, and the share of the step the ranks spend exchanging (rows
out and back, row gradients to their owners, the dense gradients' all-reduce; training/
exchange_clock.py). On a GPU, --no-autocast makes the comparison float32 (bf16 autocast rounds a
half batch differently from a whole one). Each run's checkpoint and metrics stay under --out.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from training.train_config import TrainConfig

from .report import machine, write_rows

LOSS_RTOL = 2e-5  # tests/training/test_training.py: two gloo processes against one, float32


@dataclass
class TrainWorldBenchConfig(TrainConfig):
    world_sizes: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "world sizes to train, each on the same tokens; the first is the reference"})
    results: str = field(default="bench-out/train_world.json", metadata={
        "help": "JSON file of the comparison; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.world_sizes or min(self.world_sizes) < 1:
            raise ValueError(f"--world-sizes: give one or more sizes >= 1 (got {self.world_sizes})")
        for w in self.world_sizes:
            if self.batch % w:
                raise ValueError(f"--batch {self.batch} must be divisible by every --world-sizes entry ({w})")

    def train_config(self, world: int) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**values, "world_size": world, "out": str(Path(self.out) / f"world{world}"),
                              "resume": False, "save_every": 0})


def max_relative_difference(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=math.nan)


def compare(runs: dict[int, dict]) -> dict:
    """The metrics.json of each world size -> the comparison's row."""
    first = next(iter(runs))
    reference = runs[first]
    ref_losses = [loss for _, loss in reference["history"]["train"]]
    out = {"bench": "train-world", "reference_world_size": first, "global_batch": reference["batch"],
           "seq_len": reference["seq_len"], "device": reference["device"], "loss_rtol": LOSS_RTOL, "runs": []}
    for world, m in runs.items():
        losses = [loss for _, loss in m["history"]["train"]]
        diff = max_relative_difference(ref_losses, losses)
        out["runs"].append({
            "world_size": world, "steps": m["steps"], "step_s_median": m["step_s_median"],
            "tokens_per_s": m["batch"] * m["seq_len"] / m["step_s_median"],
            "step_time_ratio": m["step_s_median"] / reference["step_s_median"],
            "exchange_share": m["exchange_share"], "exchange_s_median": m["exchange_s_median"],
            "exchange_bytes_median": m["exchange_bytes_median"],
            "val_loss": m["val_loss"], "first_loss": losses[0], "last_loss": losses[-1],
            "max_loss_rel_diff": diff, "losses_match": bool(diff <= LOSS_RTOL)})
    return out


def report(row: dict) -> str:
    lines = [f"train at world sizes {[r['world_size'] for r in row['runs']]} on {row['device']}, global batch "
             f"{row['global_batch']} x {row['seq_len']} tokens",
             f"{'world':>5} {'step ms':>9} {'tokens/s':>11} {'vs first':>8} {'exchange':>8} "
             f"{'rows ms':>8} {'grads ms':>8} {'dense ms':>8} {'loss diff':>10}"]
    for r in row["runs"]:
        ex = r["exchange_s_median"]
        lines.append(f"{r['world_size']:>5} {1e3 * r['step_s_median']:>9.1f} {r['tokens_per_s']:>11,.0f} "
                     f"{r['step_time_ratio']:>7.2f}x {100 * r['exchange_share']:>7.1f}% {1e3 * ex['rows']:>8.1f} "
                     f"{1e3 * ex['row_grads']:>8.1f} {1e3 * ex['dense_grads']:>8.1f} "
                     f"{r['max_loss_rel_diff']:>10.2e}{'' if r['losses_match'] else '  > tolerance'}")
    return "\n".join(lines)


def run(cfg: TrainWorldBenchConfig) -> int:
    from training.trainer import run as train
    runs = {}
    for world in cfg.world_sizes:
        one = cfg.train_config(world)
        print(f"training at world size {world} into {one.out} ...", flush=True)
        train(one)
        runs[world] = json.loads((Path(one.out) / "metrics.json").read_text())
    row = {**compare(runs), "autocast": cfg.autocast, **machine()}
    print("\n" + report(row))
    print(f"wrote {write_rows([row], cfg.results)}")
    return 0 if all(r["losses_match"] for r in row["runs"]) else 1
