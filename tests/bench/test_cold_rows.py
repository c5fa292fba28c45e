"""bench scale's cold phases (bench/cold_rows.py): ids that are each a disk read, disk counters read
right, fio parsed, and the row check that catches a single wrong byte."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import cold_rows
from bench.scale import ScaleBenchConfig
from core.row_format import RowFormat
from core.table_init import BLOCK_ROWS, seeded_rows

from ..served import tiny_config

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_cold_ids_never_share_a_page_and_stay_in_the_table():
    parts = cold_rows.cold_ids(table_rows=100_000, clients=3, per_client=500, seed=1)
    ids = np.concatenate(parts)
    assert [len(p) for p in parts] == [500] * 3
    assert ids.max() < 100_000 and ids.min() >= 0
    assert len(np.unique(ids // cold_rows.ROWS_PER_PAGE)) == len(ids)  # one row per 4 KiB of 128 B rows
    assert not np.array_equal(parts[0], np.sort(parts[0]))  # random page order, not a sequential scan


def test_disk_counters_give_reads_and_their_queue_depth():
    a = cold_rows.DiskCounters(reads=100, sectors=800, read_ms=50, t=10.0)
    b = cold_rows.DiskCounters(reads=2100, sectors=16800, read_ms=16050, t=12.0)
    got = b.since(a)
    assert got["disk_reads"] == 2000 and got["disk_reads_per_s"] == 1000
    assert got["disk_read_mib"] == pytest.approx(16000 / 2048)
    assert got["queue_depth"] == pytest.approx(8.0)  # 16 s of reading in 2 s: 8 in flight on average


def test_the_device_of_a_file_is_found_in_diskstats_or_reported_missing(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    device = cold_rows.device_of(tmp_path / "f")
    if device is not None:
        assert cold_rows.DiskCounters.sample(device).reads >= 0
    assert cold_rows.DiskCounters.sample(None).reads == 0


def test_verify_counts_rows_that_differ_from_the_loaded_values():
    config = tiny_config(row_dtype="bfloat16")
    fmt = RowFormat("bfloat16", config.head_dim)
    ids = np.array([5, BLOCK_ROWS + 3, 7, 2 * BLOCK_ROWS + 1, 5])
    rows = np.concatenate([fmt.encode(seeded_rows(0, 1, int(i), int(i) + 1, config.head_dim)) for i in ids])
    assert cold_rows.verify(config, 0, ids, rows, progress=False) == 0
    rows[3, 17] ^= 1
    rows[4, 0] ^= 0x80
    assert cold_rows.verify(config, 0, ids, rows, progress=False) == 2
    assert cold_rows.verify(config, 1, ids[:1], rows[:1], progress=False) == 1  # another seed's rows


@pytest.mark.skipif(not shutil.which("fio"), reason="fio is not installed (apt-get install fio)")
def test_fio_reads_the_file_at_the_depth_asked(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    got = cold_rows.fio(path, 4, 1, cold_rows.device_of(path))
    assert got["iodepth"] == 4 and got["fio_iops"] > 0 and got["fio_p99_ms"] >= got["fio_p50_ms"] > 0


def test_config_names_the_flag_it_refuses():
    with pytest.raises(ValueError, match="--read-modes"):
        ScaleBenchConfig(read_modes=["uring"])
    with pytest.raises(ValueError, match="--phases"):
        ScaleBenchConfig(phases=["warm"])
    with pytest.raises(ValueError, match="--request-rows"):
        ScaleBenchConfig(request_rows=[0])


def test_bench_scale_end_to_end_on_a_small_table(tmp_path):
    """Both phases against a real server on a real store, every row checked; no fio (CI has none)."""
    import json
    import subprocess
    import sys
    out = tmp_path / "scale.json"
    subprocess.run([sys.executable, "-m", "cli", "bench", "scale", "--sizes-gb", "0.02", "--request-rows", "1024",
                    "--read-modes", "advise", "--duration-s", "1", "--clients", "1", "--server-workers", "1",
                    "--fio-depths", "--out", str(out)], check=True, timeout=600)
    rows = json.loads(out.read_text())
    assert [r["bench"] for r in rows] == ["scale-cold", "scale-trace"]
    for r in rows:
        assert r["rows_served"] > 0 and r["failed_requests"] == 0 and r["wrong_rows_in_run"] == 0
        assert r["rows_checked"] == sum(x["rows_served"] for x in rows)
    assert 0 < rows[1]["device_hit_rate"] < 1
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("results", [["scale_cold_rows.json", "scale_cold_rows_trace.json"],
                                     ["scale.json", "scale_hugepages.json"]])
def test_replot_draws_the_committed_results_of_either_format(tmp_path, results):
    from cli.main import main
    paths = [str(RESULTS / name) for name in results]
    assert main(["bench", "scale", "--replot", *paths, "--out", str(tmp_path / "again.json")]) == 0
    png = (tmp_path / "again.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_replot_refuses_mixed_formats_naming_the_files(tmp_path, capsys):
    from cli.main import main
    paths = [str(RESULTS / "scale_cold_rows.json"), str(RESULTS / "scale.json")]
    assert main(["bench", "scale", "--replot", *paths, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "scale_cold_rows.json" in err and "draw them separately" in err
