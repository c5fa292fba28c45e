"""ClusterConfig: the shard map that model workers and memory servers both read.

    {"shards": [{"replicas": ["10.0.0.1:50051", "10.0.0.2:50051"]},
                {"replicas": ["10.0.0.3:50051", "10.0.0.4:50051"]}]}

Shard i holds rows [i * R // N, (i + 1) * R // N) of every table of R rows (manifest.shard_bounds).
Why row ranges and not a hash of the row id: the row ids are already hashes, spread uniformly over
each sub-table, so equal ranges carry equal load; a range keeps each shard's rows one contiguous run
of chunks (a shard loads sequentially, `load --shard I/N`); and a batch splits with one
`searchsorted` over N + 1 boundaries. Every replica of a shard serves the same rows; a server started
with `--cluster FILE --shard I` refuses to serve a store that holds another shard.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ClusterConfig:
    shards: list[list[str]]  # per shard, the addresses (host:port) of its replicas

    def __post_init__(self):
        if not self.shards:
            raise ValueError("cluster config: shards is empty; list at least one shard with one replica")
        for i, replicas in enumerate(self.shards):
            if not replicas:
                raise ValueError(f"cluster config: shard {i} has no replicas")
            for address in replicas:
                host, _, port = str(address).rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"cluster config: shard {i} replica {address!r} is not host:port")

    @classmethod
    def load(cls, path: str | Path) -> "ClusterConfig":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise ValueError(f"cluster config {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"cluster config {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise ValueError(f'cluster config {path} must be {{"shards": [{{"replicas": ["host:port", ...]}}, ...]}}')
        try:
            return cls([list(shard["replicas"]) for shard in data["shards"]])
        except (KeyError, TypeError):
            raise ValueError(f'cluster config {path}: every shard needs "replicas": ["host:port", ...]') from None

    def to_json(self) -> str:
        return json.dumps({"shards": [{"replicas": r} for r in self.shards]}, indent=2)

    def check_store(self, manifests, shard: int) -> None:
        """Refuse a store whose published tables are not shard `shard` of this cluster."""
        if not 0 <= shard < len(self.shards):
            raise ValueError(f"--shard {shard} is outside the cluster's shards [0, {len(self.shards)})")
        for m in manifests:
            if m.status == "published" and (m.shard, m.shards) != (shard, len(self.shards)):
                raise ValueError(f"table {m.table} v{m.version} in this store is shard {m.shard} of "
                                 f"{m.shards}, but this server is shard {shard} of {len(self.shards)}: "
                                 f"load it with --shard {shard}/{len(self.shards)}")
