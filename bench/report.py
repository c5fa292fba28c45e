"""Machine description and JSON output shared by the benchmarks."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"machine": f"{platform.machine()} {cpu_model()}",
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def write_rows(rows: list[dict], path: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return out


def process_tree(parent: int) -> list[int]:
    """A process and its direct children (a server and its workers), from /proc."""
    pids = [parent]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == parent:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def process_counters(pids) -> tuple[int, float]:
    """(major page faults, CPU seconds) summed over processes."""
    faults, ticks = 0, 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            faults, ticks = faults + int(f[9]), ticks + int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return faults, ticks / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (/proc/stat), iowait counted idle."""
    ticks = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
