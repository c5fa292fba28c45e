"""`engram-memory stats`: what each process of a running memory service has served.

One connection reaches one server process (they share the port), so the command opens several and
keeps one answer per process id it meets."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class StatsConfig:
    target: str = field(default="127.0.0.1:50051", metadata={"help": "memory service address host:port"})
    token_file: str = field(default="", metadata={"help": "file holding the service's read token"})
    connections: int = field(default=16, metadata={
        "help": "connections to open to find every server process (one process answers each)"})
    json: bool = field(default=False, metadata={"help": "print one JSON object per process"})

    def __post_init__(self):
        if self.connections < 1:
            raise ValueError(f"StatsConfig.connections must be >= 1 (got {self.connections})")


def run_stats(cfg: StatsConfig) -> int:
    from google.protobuf.json_format import MessageToDict

    from core.credentials import read_secret

    from .memory_client import MemoryClient
    token = read_secret(cfg.token_file, "--token-file") or None
    with MemoryClient(cfg.target, channels=cfg.connections, shared_memory=False, token=token, timeout_s=5) as client:
        answers = {s.pid: s for s in client.stats()}
    rows = [MessageToDict(answers[pid], preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for pid in sorted(answers)]
    for row in rows:  # protobuf's JSON writes 64-bit integers as strings
        row.update({k: int(v) for k, v in row.items() if k in ("requests", "rows", "bytes", "errors")})
    if cfg.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{cfg.target}: {len(rows)} server process(es) answered over {cfg.connections} connections")
    print(f"{'pid':>8}{'uptime s':>11}{'requests':>12}{'errors':>9}{'rows':>16}{'GiB':>9}")
    for r in rows:
        print(f"{r['pid']:>8}{r['uptime_s']:>11.0f}{r['requests']:>12,}{r['errors']:>9,}"
              f"{r['rows']:>16,}{r['bytes'] / 2**30:>9.2f}")
    return 0
