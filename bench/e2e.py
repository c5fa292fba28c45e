"""`engram-memory bench e2e`: tokens/s of the demo model with tables in the memory service (or the
co-located LMDB) against the same model holding its tables, prefill and decode, in one run; exposed
wait as a share of step time; cache hit rates. One JSON row per run of the command."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .comparison import ComparisonConfig, run_comparison
from .comparison_report import report
from .report import machine


@dataclass
class E2EBenchConfig(ComparisonConfig):
    out: str = field(default="bench-out/e2e.json", metadata={"help": "JSON file to append a row to; bench-out/ is not tracked (the committed figures are in bench/results/)"})


def run(cfg: E2EBenchConfig) -> int:
    worker = ComparisonConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ComparisonConfig)})
    out = cfg.out
    result = {"bench": "e2e", **run_comparison(worker), **machine()}
    print("\n" + report(result))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(result)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"appended to {path}")
    return 0 if result["outputs_match"] else 1
