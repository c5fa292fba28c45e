"""The all-cores floor of bench service measures np.take on every core both ways and keeps the faster."""
import numpy as np

from bench.store import all_cores, batches


def test_all_cores_floor_measures_threads_and_processes():
    ram = np.random.default_rng(0).integers(0, 255, (50_000, 160), dtype=np.uint8)
    got = all_cores(ram, batches(len(ram), 4096, 8, 1), duration_s=0.2, workers=2)
    assert got["workers"] == 2 and got["how"] in ("threads", "processes")
    assert got["threads_rows_per_s"] > 0 and got["processes_rows_per_s"] > 0
    assert got["rows_per_s"] == max(got["threads_rows_per_s"], got["processes_rows_per_s"])
