"""Rows that are not in the page cache: the service's throughput for them against fio's on the same file.

A cold phase starts the service on a table whose pages were dropped from the page cache, and client
processes ask for rows that each lie on a page no earlier request of the phase touched (row 32k + 5
for a random permutation of k: 128 B rows, 32 to a 4 KiB page), so every row served is one disk read.
The block device's counters (/proc/diskstats) give the reads the phase caused and their average
queue depth (time spent reading, summed over reads, / elapsed time), and fio then reads 4 KiB at
random from the same file with O_DIRECT (io_uring) at that queue depth: the disk's own IOPS to compare with.
Every row a client receives is kept and compared byte for byte with the loaded value (the seeded
init, encoded as the loader does) after the run, outside the timed part.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import numpy as np

ROWS_PER_PAGE = 32  # 4096 / 128 B rows
READ_MODES = {  # the server flags of each read path for rows not in memory (memory_service/service_config.py)
    "faults": ["--read-mode", "off"],  # as before issue 19: the gather's page faults, one at a time
    "advise": ["--read-mode", "advise", "--read-above-mb", "0"],
    "threads": ["--read-mode", "threads", "--read-depth", "32", "--read-above-mb", "0"],
}


def drop_cache(path) -> None:
    """The file's pages out of the page cache (flushed first: dirty pages are not dropped)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def device_of(path) -> str | None:
    """The /proc/diskstats name of the block device holding path, or None (e.g. overlay, tmpfs)."""
    dev = os.stat(path).st_dev
    for line in open("/proc/diskstats"):
        f = line.split()
        if (int(f[0]), int(f[1])) == (os.major(dev), os.minor(dev)):
            return f[2]
    return None


@dataclass
class DiskCounters:
    reads: int
    sectors: int
    read_ms: int  # time spent reading, summed over the reads: / elapsed ms = their mean queue depth
    t: float

    @classmethod
    def sample(cls, device: str | None) -> "DiskCounters":
        now = time.perf_counter()
        for line in open("/proc/diskstats") if device else []:
            f = line.split()
            if f[2] == device:
                return cls(int(f[3]), int(f[5]), int(f[6]), now)
        return cls(0, 0, 0, now)

    def since(self, before: "DiskCounters") -> dict:
        wall = self.t - before.t
        return {"disk_reads": self.reads - before.reads, "disk_read_mib": (self.sectors - before.sectors) / 2048,
                "disk_reads_per_s": (self.reads - before.reads) / wall,
                "queue_depth": (self.read_ms - before.read_ms) / (1e3 * wall)}


def wait_quiet(device: str | None, reads_per_s: float = 100, timeout_s: float = 120) -> float:
    """Seconds until the disk's reads fall below reads_per_s (the checksum warm-up done)."""
    t0 = time.perf_counter()
    last = DiskCounters.sample(device)
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(0.5)
        now = DiskCounters.sample(device)
        if (now.reads - last.reads) / (now.t - last.t) < reads_per_s:
            break
        last = now
    return time.perf_counter() - t0


def cold_ids(table_rows: int, clients: int, per_client: int, seed: int) -> list[np.ndarray]:
    """For each client, row ids on pages no other id touches, in random page order."""
    pages = np.random.default_rng(seed).permutation(table_rows // ROWS_PER_PAGE)[:clients * per_client]
    return np.array_split(pages * ROWS_PER_PAGE + 5, clients)


def cold_client(target, ids, request_rows, duration_s, start_at, results):
    """Sorted requests of request_rows ids (as clients send after deduplicating) until duration_s."""
    from model_client import MemoryClient, MemoryServiceError
    latencies, got_ids, got_rows, errors, i = [], [], [], [], 0
    with MemoryClient(target, channels=1) as client:
        client.describe("layer1")
        while start_at.value == 0 or time.time() < start_at.value:  # set by the parent once all are ready
            time.sleep(0.001)
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < duration_s and i + request_rows <= len(ids):
            batch = np.sort(ids[i:i + request_rows])
            i += request_rows
            t0 = time.perf_counter()
            try:
                rows = client.lookup("layer1", batch)
            except MemoryServiceError as e:
                errors.append(str(e))
                continue
            latencies.append(time.perf_counter() - t0)
            got_ids.append(batch)
            got_rows.append(np.asarray(rows, dtype=np.uint8))
        wall = time.perf_counter() - t_start
    results.put((wall, latencies, np.concatenate(got_ids) if got_ids else np.zeros(0, np.int64),
                 np.concatenate(got_rows) if got_rows else np.zeros((0, 128), np.uint8), errors,
                 i + request_rows > len(ids)))


def fio(path, depth: int, seconds: float, device: str | None) -> dict:
    """fio's 4 KiB random reads of the whole file with O_DIRECT at one queue depth (iodepth, all jobs)."""
    if not shutil.which("fio"):
        raise SystemExit("bench scale needs fio for its cold-row comparison: apt-get install fio "
                         "(or --fio-depths with no depths: no comparison)")
    # the strongest fio measured on this disk: io_uring with registered buffers and files, the depth
    # split over two jobs (50k IOPS at 256 vs 40-44k for one libaio job at 256, side by side)
    jobs = 2 if depth >= 2 else 1
    before = DiskCounters.sample(device)
    out = subprocess.run(["fio", "--name=cold", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
                          "--direct=1", "--ioengine=io_uring", "--fixedbufs", "--registerfiles",
                          f"--numjobs={jobs}", f"--iodepth={-(-depth // jobs)}", "--group_reporting",
                          "--norandommap", "--randrepeat=0", f"--runtime={seconds:g}", "--time_based",
                          "--output-format=json"], check=True, capture_output=True, text=True).stdout
    disk = DiskCounters.sample(device).since(before)
    read = json.loads(out)["jobs"][0]["read"]
    pct = read["clat_ns"].get("percentile", {})
    return {"bench": "scale-fio", "iodepth": depth, "fio_iops": read["iops"],
            "fio_p50_ms": pct.get("50.000000", 0) / 1e6, "fio_p99_ms": pct.get("99.000000", 0) / 1e6,
            "fio_queue_depth": disk["queue_depth"], "fio_s": seconds, "fio_engine": f"io_uring, {jobs} job(s)"}


def verify(config, seed: int, ids: np.ndarray, rows: np.ndarray, progress: bool = True) -> int:
    """Rows (uint8 [N, row_bytes]) against the loaded values of their ids: the number that differ."""
    from tqdm import tqdm

    from core.row_format import RowFormat
    from core.table_init import BLOCK_ROWS, seeded_rows
    fmt = RowFormat(config.row_dtype, config.head_dim)
    order = np.argsort(ids, kind="stable")
    ids, rows = ids[order], rows[order]
    blocks = ids // BLOCK_ROWS
    cuts = np.flatnonzero(np.diff(blocks)) + 1
    bad = 0
    for a, b in tqdm(zip([0, *cuts.tolist()], [*cuts.tolist(), len(ids)]), total=len(cuts) + 1,
                     desc="checking rows", unit="block", disable=not progress or not len(ids)):
        lo = int(blocks[a]) * BLOCK_ROWS
        hi = int(ids[b - 1]) + 1
        want = fmt.encode(seeded_rows(seed, 1, lo, hi, config.head_dim))
        bad += int(np.any(want[ids[a:b] - lo] != rows[a:b], axis=1).sum())
    return bad
