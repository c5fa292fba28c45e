"""`engram-memory worker`: a model worker serving the demo workload from the memory service.

Round after round it prefills a batch of real-text prompts and decodes them with the demo model,
every Engram row coming from the service through the device (and optional host) row cache, and
prints one JSON line per round: tokens/s, rows read from the service, hit rates, exposed wait. When
the service is unreachable it logs a clear error and retries with backoff instead of serving
anything wrong; it resumes as soon as the service answers again. This is what docker-compose scales.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import torch

from .row_cache import POLICIES


@dataclass
class WorkerLoopConfig:
    target: str = field(default="127.0.0.1:50051", metadata={"help": "memory service address host:port"})
    cluster: str = field(default="", metadata={
        "help": "cluster config JSON of a sharded, replicated service (memory_service/cluster.py); "
                "replaces --target"})
    token_file: str = field(default="", metadata={
        "help": "file holding the service's read token (its --token-file), sent with every call"})
    config: str = field(default="demo", metadata={"help": "EngramConfig preset or JSON file of the tables"})
    row_dtype: str = field(default="bfloat16", metadata={"help": "row dtype the tables were loaded with"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto"})
    device_cache_mb: int = field(default=64, metadata={"help": "device row cache, MiB"})
    host_cache_mb: int = field(default=0, metadata={"help": "pinned host row cache, MiB (0: none)"})
    host_mirror_mb: int = field(default=0, metadata={
        "help": "pinned host memory for whole tables of the earliest Engram layers, copied from the service "
                "at start; their decode misses then need no RPC (0: none)"})
    policy: str = field(default="lookahead", metadata={"help": f"cache policy: {', '.join(POLICIES)}"})
    num_layers: int = field(default=16, metadata={"help": "backbone blocks"})
    hidden_size: int = field(default=256, metadata={"help": "backbone width"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    sequences: int = field(default=4, metadata={"help": "sequences per round"})
    min_len: int = field(default=64, metadata={"help": "shortest prompt, tokens"})
    max_len: int = field(default=256, metadata={"help": "longest prompt, tokens"})
    decode_steps: int = field(default=8, metadata={"help": "decode steps per round"})
    rounds: int = field(default=0, metadata={"help": "rounds to run (0: until stopped)"})
    retry_s: float = field(default=2.0, metadata={"help": "wait before retrying when the service is down"})
    seed: int = field(default=0, metadata={"help": "seed of the weights (prompts vary per round)"})

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"WorkerLoopConfig.policy must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        if ":" not in self.target:
            raise ValueError(f"WorkerLoopConfig.target must be host:port (got {self.target!r})")
        if self.host_cache_mb < 0 or self.host_mirror_mb < 0:
            raise ValueError("WorkerLoopConfig.host_cache_mb and host_mirror_mb must be >= 0")
        if self.rounds < 0 or self.retry_s <= 0:
            raise ValueError("WorkerLoopConfig.rounds must be >= 0 and retry_s > 0")


def _emit(**fields) -> None:
    print(json.dumps({"ts": round(time.time(), 3), "worker": f"{socket.gethostname()}:{os.getpid()}", **fields}),
          flush=True)


def run(cfg: WorkerLoopConfig) -> int:
    from .config import EngramConfig
    from .demo_model import BackboneConfig, DemoModel
    from .hasher import NgramHasher
    from .memory_client import MemoryClient, MemoryServiceError
    from .prefetcher import Prefetcher
    from .remote_backend import RemoteTableBackend
    from .tiers import ServiceTier
    from .tokenizer import get_compressed_tokenizer
    from .workload import Runner, WorkloadConfig, make_prompts

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    config = EngramConfig.load(cfg.config).replace(row_dtype=cfg.row_dtype)
    tokenizer = get_compressed_tokenizer(config.tokenizer)
    hasher = NgramHasher(config, tokenizer)
    from memory_service.auth import read_secret
    token = read_secret(cfg.token_file, "--token-file") or None
    if cfg.cluster:
        from .cluster_client import ClusterClient
        client = ClusterClient(cfg.cluster, timeout_s=10.0, token=token)
    else:
        client = MemoryClient(cfg.target, timeout_s=10.0, retries=3, token=token)
    while True:  # wait for the service and its tables, checking they fit this model
        try:
            client.check(config, tokenizer.sha256, tokenizer.num_compressed)
            break
        except MemoryServiceError as e:
            _emit(level="ERROR", msg="memory service unavailable; retrying", error=str(e),
                  target=cfg.cluster or cfg.target)
            time.sleep(cfg.retry_s)
    prefetcher = Prefetcher(hasher, ServiceTier(client), device, cfg.device_cache_mb << 20,
                            cfg.host_cache_mb << 20, cfg.policy, host_mirror_bytes=cfg.host_mirror_mb << 20)
    torch.manual_seed(cfg.seed)
    backbone = BackboneConfig(cfg.num_layers, cfg.hidden_size, 1, cfg.heads,
                              max_positions=cfg.max_len + cfg.decode_steps + 1)
    model = DemoModel(backbone, config, {layer: RemoteTableBackend(prefetcher, layer, check=False)
                                         for layer in config.layer_ids}).to(device).eval()
    runner = Runner(model, hasher, prefetcher, pad_id=config.pad_id)
    _emit(level="INFO", msg="worker ready", target=cfg.target, device=str(device), policy=cfg.policy,
          device_cache_mb=cfg.device_cache_mb, layers=config.layer_ids)
    done = 0
    while cfg.rounds == 0 or done < cfg.rounds:
        prompts = make_prompts(tokenizer, WorkloadConfig(cfg.sequences, cfg.min_len, cfg.max_len,
                                                         cfg.decode_steps, cfg.seed + done))
        rows_before = sum(prefetcher.store_rows.values())
        try:
            result = runner.run(prompts, cfg.decode_steps)
        except MemoryServiceError as e:
            prefetcher.abandon()
            _emit(level="ERROR", msg="memory service unavailable; round abandoned, retrying", error=str(e))
            time.sleep(cfg.retry_s)
            continue
        done += 1
        stats = prefetcher.device_tier.stats()
        waits = sum(w for waits in prefetcher.exposed_wait_s.values() for w in waits)
        _emit(level="INFO", msg="round", round=done, prefill_tokens_per_s=round(result.prefill_tokens_per_s, 1),
              decode_tokens_per_s=round(result.decode_tokens_per_s, 1),
              rows_from_service=sum(prefetcher.store_rows.values()) - rows_before,
              rows_served_total=sum(prefetcher.store_rows.values()),
              device_hit_rate=round(stats.hit_rate, 4), exposed_wait_s_total=round(waits, 3))
    prefetcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(WorkerLoopConfig()))
