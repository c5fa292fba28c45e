"""`engram-memory worker`: a model worker serving the demo workload from the memory service.

Round after round it prefills a batch of real-text prompts and decodes them with the demo model,
every Engram row coming from the service through the device (and optional host) row cache, and
logs one JSON line per round on stdout (the service's log shape, with this worker's id): tokens/s,
rows read from the service, hit rates, exposed wait; `--metrics-port` exports the same per layer and
tier to Prometheus (worker_metrics.py). When the service is unreachable it logs a clear error and
retries instead of serving anything wrong, and resumes when the service answers again. This is what
docker-compose scales: each worker has its own id and, unless --workload-seed is given, its own text.
With --checkpoint it runs a trained model (`engram-memory train`) instead of random weights, after
sampling the service's rows against the checkpoint's, and each round's line carries the text it generated.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import socket
import sys
import time
import zlib
from dataclasses import dataclass, field

import torch

from core.config import ROW_DTYPES
from core.flags import part
from core.manifest import table_name

from .client_config import ClientConfig
from .tier_stack import TierConfig
from .workload import WorkloadConfig

logger = logging.getLogger("engram_memory")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class WorkerLoopConfig:
    client: ClientConfig = part(ClientConfig)
    tiers: TierConfig = part(lambda: TierConfig(policy="lookahead"))
    workload: WorkloadConfig = part(lambda: WorkloadConfig(sequences=4, min_len=64, max_len=256, decode_steps=8,
                                                           workload_seed=-1))
    config: str = field(default="", metadata={
        "help": "EngramConfig preset or JSON file of the tables (default: the --checkpoint's, else demo)"})
    checkpoint: str = field(default="", metadata={
        "help": "run a model `engram-memory train` wrote (its index or merged .safetensors) on the service's "
                "tables, which must hold its rows (`load --from`), and log the text it generates; the "
                "backbone flags are then the checkpoint's"})
    row_dtype: str = field(default="", metadata={
        "help": "row dtype the tables were loaded with ('': whatever the published tables hold)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when there is one)"})
    num_layers: int = field(default=16, metadata={"help": "backbone blocks (random weights)"})
    hidden_size: int = field(default=256, metadata={"help": "backbone width (random weights)"})
    heads: int = field(default=4, metadata={"help": "attention heads (random weights)"})
    rounds: int = field(default=0, metadata={"help": "rounds to run (0: until stopped)"})
    retry_s: float = field(default=2.0, metadata={"help": "wait before retrying when the service is down"})
    seed: int = field(default=0, metadata={"help": "seed of the weights (every worker runs the same model)"})
    metrics_port: int = field(default=0, metadata={
        "help": "serve Prometheus /metrics on this port: cache hits, rows fetched per tier, exposed wait "
                "(0: off; a busy port is logged and metrics stay off)"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})

    def __post_init__(self):
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"WorkerLoopConfig.device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.row_dtype and self.row_dtype not in ROW_DTYPES:
            raise ValueError(f"WorkerLoopConfig.row_dtype must be one of {', '.join(ROW_DTYPES)} or empty "
                             f"(got {self.row_dtype!r})")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"WorkerLoopConfig.log_level must be DEBUG, INFO, WARNING or ERROR (got {self.log_level!r})")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"WorkerLoopConfig.metrics_port must be a TCP port or 0 (got {self.metrics_port})")
        if self.checkpoint and not os.path.isfile(self.checkpoint):
            raise ValueError(f"WorkerLoopConfig.checkpoint: no such file {self.checkpoint!r}")
        if self.rounds < 0 or self.retry_s <= 0:
            raise ValueError("WorkerLoopConfig.rounds must be >= 0 and retry_s > 0")


def worker_id() -> str:
    """host-pid-random: scaled containers share a hostname (host networking) and pid 1."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _emit(level: str = "INFO", msg: str = "", **fields) -> None:
    logger.log(getattr(logging, level), msg, extra={"fields": fields})


def _row_dtype(client, cfg: "WorkerLoopConfig", config) -> str:
    """--row-dtype, or the dtype the published tables hold."""
    if cfg.row_dtype:
        return cfg.row_dtype
    return client.describe(table_name(config.layer_ids[0]), refresh=True).row_dtype


def run(cfg: WorkerLoopConfig) -> int:
    from core import checkpoint_format
    from core.logs import setup
    from core.tokenizer import get_compressed_tokenizer

    from .demo_model import BackboneConfig, DemoModel
    from .hasher import NgramHasher
    from .memory_client import MemoryServiceError
    from .prefetcher import Prefetcher
    from .remote_backend import RemoteTableBackend
    from .service_tier import ServiceTier
    from .tier_stack import build_tiers
    from .trained_model import check_served_rows, load_trained
    from .workload import Runner, generated_text, make_prompts
    me = worker_id()
    setup(cfg.log_level, stream=sys.stdout, worker=me)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    config = checkpoint_format.config_for(cfg.config, cfg.checkpoint)
    tokenizer = get_compressed_tokenizer(config.tokenizer)
    if cfg.metrics_port:
        from . import worker_metrics
        try:
            worker_metrics.serve(cfg.metrics_port)
        except OSError as e:
            _emit("WARNING", "metrics port busy; metrics off", metrics_port=cfg.metrics_port, error=e.strerror)
    client = cfg.client.connect()
    while True:  # wait for the service and its tables, checking they fit this model
        try:
            config = config.replace(row_dtype=_row_dtype(client, cfg, config))
            client.check(config, tokenizer.sha256, tokenizer.num_compressed)
            break
        except MemoryServiceError as e:
            _emit("ERROR", "memory service unavailable; retrying", error=str(e), target=cfg.client.address)
            time.sleep(cfg.retry_s)
    if cfg.checkpoint:  # the same geometry may hold other rows: sample them against the checkpoint's
        check_served_rows(client, cfg.checkpoint, config)
    hasher = NgramHasher(config, tokenizer)
    prefetcher = Prefetcher(hasher, build_tiers(cfg.tiers, ServiceTier(client), config, device))
    backends = {layer: RemoteTableBackend(prefetcher, layer) for layer in config.layer_ids}
    if cfg.checkpoint:
        model = load_trained(cfg.checkpoint, local_tables=False, backends=backends, row_dtype=config.row_dtype)
    else:
        torch.manual_seed(cfg.seed)
        backbone = BackboneConfig(cfg.num_layers, cfg.hidden_size, 1, cfg.heads,
                                  max_positions=cfg.workload.max_len + cfg.workload.decode_steps + 1)
        model = DemoModel(backbone, config, backends)
    model = model.to(device).eval()
    workload = cfg.workload.within(model.cfg.max_positions)
    runner = Runner(model, hasher, prefetcher, pad_id=config.pad_id)
    from .worker_metrics import WorkerMetrics
    metrics = WorkerMetrics(prefetcher)
    workload_seed = cfg.workload.workload_seed if cfg.workload.workload_seed >= 0 else zlib.crc32(me.encode())
    _emit("INFO", "worker ready", target=cfg.client.address, device=str(device), policy=cfg.tiers.policy,
          device_cache_mb=cfg.tiers.device_cache_mb, layers=config.layer_ids, row_dtype=config.row_dtype,
          workload_seed=workload_seed, metrics_port=cfg.metrics_port, checkpoint=cfg.checkpoint or None,
          max_len=workload.max_len)
    done = 0
    while cfg.rounds == 0 or done < cfg.rounds:
        prompts = make_prompts(tokenizer, dataclasses.replace(workload, workload_seed=workload_seed + done))
        rows_before = sum(prefetcher.rows_below_device.values())
        try:
            result = runner.run(prompts, workload.decode_steps)
        except MemoryServiceError as e:
            prefetcher.abandon()
            _emit("ERROR", "memory service unavailable; round abandoned, retrying", error=str(e))
            time.sleep(cfg.retry_s)
            continue
        done += 1
        metrics.update(result.prefill_tokens, result.decode_tokens)
        stats = prefetcher.tiers.device_cache.stats()
        waits = sum(w for waits in prefetcher.exposed_wait_s.values() for w in waits)
        _emit("INFO", "round", round=done, prefill_tokens_per_s=round(result.prefill_tokens_per_s, 1),
              decode_tokens_per_s=round(result.decode_tokens_per_s, 1),
              rows_from_service=sum(prefetcher.rows_below_device.values()) - rows_before,
              rows_served_total=sum(prefetcher.rows_below_device.values()),
              device_hit_rate=round(stats.hit_rate, 4), exposed_wait_s_total=round(waits, 3),
              **({"generated": generated_text(tokenizer, prompts, result.tokens, count=1)[0]} if cfg.checkpoint else {}))
    prefetcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(WorkerLoopConfig()))
