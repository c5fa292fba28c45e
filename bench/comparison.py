"""End to end: the demo model over the same workload with local tables and with tables in the
memory service (or read co-located from its LMDB), in one run: tokens/s, exposed wait, hit rates,
and whether the outputs match bit for bit. `engram-memory demo` and `bench e2e` both run this.

The model has random weights and the tables seeded random rows, unless --checkpoint names what
`engram-memory train` wrote: then its backbone and Engram weights, its rows loaded into a store of
their own (keyed by the checkpoint's fingerprint) and served, and the greedy text it generates."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import kernels
from core import checkpoint_format
from core.config import EngramConfig
from core.flags import part
from core.manifest import table_name
from model_client.demo_model import BackboneConfig, DemoModel
from model_client.hasher import NgramHasher
from model_client.tier_stack import TierConfig
from model_client.workload import Runner, WorkloadConfig, generated_text, make_prompts

from .comparison_report import decode_roofline_ms


@dataclass
class ComparisonConfig:
    """The e2e comparison's settings (`bench e2e` and the demo derive their flags from it)."""
    tiers: TierConfig = part(TierConfig)
    workload: WorkloadConfig = part(WorkloadConfig)
    config: str = field(default="", metadata={
        "help": "EngramConfig preset or JSON file of the tables (default: the --checkpoint's, else demo)"})
    checkpoint: str = field(default="", metadata={
        "help": "a model `engram-memory train` wrote (its index or merged .safetensors): its weights, its "
                "tables served, and the text it generates; the backbone flags are then the checkpoint's"})
    row_dtype: str = field(default="bfloat16", metadata={
        "help": "row dtype of the tables (bfloat16: 128 B rows, 2.6 GB for the demo's two layers)"})
    data_dir: str = field(default="data", metadata={"help": "where the demo's table store lives (created if absent)"})
    colocated: bool = field(default=False, metadata={
        "help": "read the store's LMDB directly (a worker on the service's host) instead of over gRPC"})
    server_workers: int = field(default=2, metadata={"help": "memory service processes"})
    service: str = field(default="", metadata={
        "help": "host:port of a running memory service to read from instead of starting one (its store must "
                "hold these tables: the outputs are compared)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when available)"})
    num_layers: int = field(default=16, metadata={"help": "backbone blocks (Engram layers must be among them)"})
    hidden_size: int = field(default=256, metadata={"help": "backbone width"})
    hc_mult: int = field(default=2, metadata={"help": "hyper-connection branches"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    dtype: str = field(default="auto", metadata={"help": "model dtype: float32, bfloat16, or auto (bf16 on cuda)"})
    prefill_batch: int = field(default=0, metadata={
        "help": "prefill the sequences in groups of this many (0: all at once); decode runs them all together"})
    repeats: int = field(default=3, metadata={
        "help": "runs per mode after a warm-up, alternating local and remote; medians reported, the ratio "
                "as the median of the back-to-back pairs' ratios"})
    seed: int = field(default=0, metadata={"help": "seed of the model weights"})

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"ComparisonConfig.device must be auto, cpu or cuda (got {self.device!r})")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("ComparisonConfig.device is cuda but torch sees no GPU")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"ComparisonConfig.dtype must be auto, float32 or bfloat16 (got {self.dtype!r})")
        if self.repeats < 1:
            raise ValueError(f"ComparisonConfig.repeats must be >= 1 (got {self.repeats})")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise ValueError(f"--checkpoint {self.checkpoint} does not exist")
        if self.service and self.colocated:
            raise ValueError("--service and --colocated: a worker reads either a service or the LMDB, not both")

    def engram_config(self) -> EngramConfig:
        """--config (checked against the checkpoint's), stored as --row-dtype."""
        return checkpoint_format.config_for(self.config, self.checkpoint).replace(row_dtype=self.row_dtype)

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                            "cpu" if self.device == "auto" else self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


def table_store_path(data_dir: str, config: EngramConfig, checkpoint: str = "") -> Path:
    """One store per table geometry (the fields that decide the rows, hashed), and per checkpoint
    (its fingerprint: a retrained checkpoint gets a fresh store)."""
    key = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("hidden_size", "hc_mult")}, sort_keys=True)
    if checkpoint:
        return Path(data_dir) / f"trained-{hashlib.sha256((key + checkpoint_format.fingerprint(checkpoint)).encode()).hexdigest()[:12]}"
    return Path(data_dir) / f"tables-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_tables(config: EngramConfig, db: Path, tokenizer, checkpoint: str = "") -> None:
    """Load the config's tables unless published: the checkpoint's rows, else the seeded random init
    (seed = config.seed)."""
    from core import row_check
    from core.geometry import TableGeometry
    from core.store import TableStore
    from memory_service.checkpoint import CheckpointRows, RandomRows
    from memory_service.loader import load_layer
    geometry = TableGeometry.from_config(config)
    store = TableStore(db, bulk=True)
    try:
        for layer in config.layer_ids:
            current = store.current_version(table_name(layer))
            if current and store.manifest(table_name(layer)).row_check != row_check.FORMAT:
                print(f"table layer{layer} in {db} was stored without per-row checksums: loading it again",
                      flush=True)
                current = 0
            if not current:
                source = (CheckpointRows(checkpoint, checkpoint_format.TABLE_TENSOR.format(L=layer), geometry.rows(layer),
                                         config.head_dim) if checkpoint else RandomRows(config.seed, layer, config.head_dim))
                print(f"creating table layer{layer} in {db} ({source.description}, once) ...", flush=True)
                load_layer(store, config, layer, source, tokenizer.sha256, tokenizer.num_compressed)
    finally:
        store.close()


def local_model(cfg: ComparisonConfig, config: EngramConfig, hasher: NgramHasher, log) -> DemoModel:
    """The model holding its whole tables: the checkpoint's weights and rows, or random weights (seed)
    over the store's seeded rows."""
    if cfg.checkpoint:
        from model_client.trained_model import load_trained
        log(f"loading the trained model {cfg.checkpoint}: its weights, and its rows as the store holds them ...")
        model = load_trained(cfg.checkpoint, row_dtype=config.row_dtype)
        if any(model.blocks[layer].engram is None for layer in config.layer_ids):
            raise ValueError(f"--checkpoint {cfg.checkpoint} was trained without Engram (--no-engram): it has no "
                             "tables to serve")
        return model
    from core.row_format import RowFormat
    from model_client.table_backend import LocalTableBackend
    log(f"building the local model: the whole tables in {cfg.torch_device} memory, the same seeded rows as the store ...")
    tables = {}
    for layer in config.layer_ids:  # one line per table: each takes seconds
        t0 = time.perf_counter()
        tables[layer] = LocalTableBackend.seeded(hasher.geometry.rows(layer), RowFormat(config.row_dtype, config.head_dim),
                                                 config.seed, layer)
        log(f"  local table layer{layer}: {hasher.geometry.rows(layer):,} rows in {time.perf_counter() - t0:.1f} s")
    backbone = BackboneConfig(cfg.num_layers, cfg.hidden_size, cfg.hc_mult, cfg.heads,
                              max_positions=cfg.workload.max_len + cfg.workload.decode_steps + 1)
    torch.manual_seed(cfg.seed)
    return DemoModel(backbone, config, tables)


def _phase_waits(prefetcher, counts_before: dict, prefill_steps: int) -> dict[int, tuple[float, float]]:
    """Per layer, the exposed wait (s) of one run's prefill forwards (its first prefill_steps: one per
    prefill group) and of its decode steps, since counts_before."""
    out = {}
    for layer, waits in prefetcher.exposed_wait_s.items():
        new = waits[counts_before.get(layer, 0):]
        out[layer] = (sum(new[:prefill_steps]), sum(new[prefill_steps:]))
    return out


def run_comparison(cfg: ComparisonConfig, log=print, before_run=lambda: None) -> dict:
    """before_run: called before each run (warm-ups included), e.g. a barrier that starts several
    workers' runs together (bench/shared_service.py)."""
    from core.tokenizer import get_compressed_tokenizer
    from memory_service.process import ServiceProcess
    from model_client.memory_client import MemoryClient
    from model_client.prefetcher import Prefetcher
    from model_client.remote_backend import RemoteTableBackend
    from model_client.service_tier import ServiceTier
    from model_client.store_tier import StoreTier
    from model_client.tier_stack import build_tiers

    config = cfg.engram_config()
    if cfg.torch_device.type == "cuda":  # cuBLAS's documented condition for run-to-run equal results
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    tokenizer = get_compressed_tokenizer(config.tokenizer)
    db = table_store_path(cfg.data_dir, config, cfg.checkpoint)
    if not cfg.service:  # a running service's tables are its own (whoever started it loaded them)
        ensure_tables(config, db, tokenizer, cfg.checkpoint)
    device, dtype = cfg.torch_device, cfg.torch_dtype
    hasher = NgramHasher(config, tokenizer)
    local = local_model(cfg, config, hasher, log).to(device, dtype).eval()
    backbone = local.cfg
    wl = cfg.workload.within(backbone.max_positions)
    if wl != cfg.workload:
        log(f"prompts cut to at most {wl.max_len} tokens: with {wl.decode_steps} decode steps they fill the "
            f"checkpoint's {backbone.max_positions} positions")
    # new prompts every repeat (the caches see fresh text); local and remote run the same ones
    prompt_sets = [make_prompts(tokenizer, dataclasses.replace(wl, workload_seed=wl.workload_seed + r))
                   for r in range(cfg.repeats)]
    if not (cfg.colocated or cfg.service):
        log(f"starting the memory service ({cfg.server_workers} processes) on {db} ...")
    server = None if cfg.colocated or cfg.service else ServiceProcess(db, workers=cfg.server_workers)
    try:
        if server:
            server.wait_serving()
        backing = StoreTier(str(db)) if cfg.colocated else ServiceTier(MemoryClient(cfg.service or server.target))
        prefetcher = Prefetcher(hasher, build_tiers(cfg.tiers, backing, config, device))
        try:
            remote = DemoModel(backbone, config, {layer: RemoteTableBackend(prefetcher, layer)
                                                  for layer in config.layer_ids}).to(device, dtype).eval()
            remote.load_state_dict(local.state_dict())
            states: dict = {}  # one KV cache for both (they alternate): 512 x 1,057 positions of a 1.3B model is 71 GB
            runners = {"local": Runner(local, hasher, pad_id=config.pad_id, states=states),
                       "remote": Runner(remote, hasher, prefetcher, pad_id=config.pad_id, states=states)}
            results = {"local": [], "remote": []}
            waits = []
            for mode, runner in runners.items():  # warm-up (page cache, connections, allocator, kernel
                before_run()                       # choices): not measured
                t0 = time.perf_counter()
                runner.run(prompt_sets[0], min(wl.decode_steps, 2), cfg.prefill_batch)
                log(f"  warm-up {mode:<6}: {time.perf_counter() - t0:.1f} s (not measured)")
            match = True
            for r in range(cfg.repeats):  # pairs alternate which mode runs first: an order effect shows
                for mode, runner in list(runners.items())[::1 if r % 2 == 0 else -1]:
                    before = {layer: len(w) for layer, w in prefetcher.exposed_wait_s.items()}
                    before_run()
                    result = runner.run(prompt_sets[r], wl.decode_steps, cfg.prefill_batch)
                    results[mode].append(result)
                    if mode == "remote":
                        groups = -(-wl.sequences // (cfg.prefill_batch or wl.sequences))
                        waits.append(_phase_waits(prefetcher, before, groups))
                    log(f"  run {r + 1}/{cfg.repeats} {mode:<6}: prefill {result.prefill_tokens_per_s:>9,.0f} tok/s, "
                        f"decode {result.decode_tokens_per_s:>8,.0f} tok/s")
                pair = (results["local"][r], results["remote"][r])
                match &= all(torch.equal(a, b) for a, b in zip(pair[0].logits, pair[1].logits))
                for result in pair:
                    result.logits = None  # bit-compared: free them (512 x 129,280 logits a step add up)
            device_stats = prefetcher.tiers.device_cache.stats()
            host_stats = prefetcher.tiers.host_cache.stats() if prefetcher.tiers.host_cache else None
            mirror = prefetcher.tiers.host_mirror
            mirrored = (sorted(mirror.data), mirror.nbytes, mirror.rows_served) if mirror else ([], 0, 0)
        finally:
            prefetcher.close()
    finally:
        if server:
            server.stop()
    med = lambda xs: statistics.median(xs)  # noqa: E731
    out = {"prefill_batch": cfg.prefill_batch, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
           "mode": "co-located lmdb" if cfg.colocated else "grpc service",
           "sequences": wl.sequences, "prefill_tokens": results["local"][0].prefill_tokens,
           "min_len": wl.min_len, "max_len": wl.max_len, "decode_steps": wl.decode_steps, "repeats": cfg.repeats,
           "decode_tokens": results["local"][0].decode_tokens, "backbone_parameters": backbone.parameters,
           "table_rows": sum(hasher.geometry.rows(layer) for layer in config.layer_ids),
           "table_bytes": hasher.geometry.total_bytes, "device_cache_bytes": TierConfig.bytes(cfg.tiers.device_cache_mb),
           "host_cache_bytes": TierConfig.bytes(cfg.tiers.host_cache_mb), "host_mirror_tables": mirrored[0],
           "host_mirror_bytes": mirrored[1], "policy": cfg.tiers.policy, "outputs_match": match,
           "kernels": "triton" if kernels.use_triton(torch.empty(0, device=device)) else "reference",
           "table_store": str(db), "row_dtype": config.row_dtype, "checkpoint": cfg.checkpoint}
    if cfg.checkpoint:  # what the trained model says, through the service (equal to local when outputs match)
        out["samples"] = generated_text(tokenizer, prompt_sets[0], results["remote"][0].tokens)
    for phase in ("prefill", "decode"):
        for mode in ("local", "remote"):
            out[f"{phase}_{mode}_run_tokens_per_s"] = [getattr(r, f"{phase}_tokens_per_s") for r in results[mode]]
            out[f"{phase}_{mode}_tokens_per_s"] = med(out[f"{phase}_{mode}_run_tokens_per_s"])
        # the median of the back-to-back pairs' ratios: robust to the machine's speed drifting
        pairs = [getattr(b, f"{phase}_tokens_per_s") / getattr(a, f"{phase}_tokens_per_s")
                 for a, b in zip(results["local"], results["remote"])]
        out[f"{phase}_ratio_remote_to_local"] = med(pairs)
        out[f"{phase}_pair_ratios"] = pairs  # even pairs ran local first, odd ones remote first
        seconds = med([getattr(r, f"{phase}_s") for r in results["remote"]])
        k = 0 if phase == "prefill" else 1
        out[f"{phase}_exposed_wait_share"] = med([sum(w[k] for w in run.values()) for run in waits]) / seconds if seconds else 0.0
        out[f"{phase}_exposed_wait_share_by_layer"] = {
            str(layer): med([run[layer][k] for run in waits]) / seconds if seconds else 0.0 for layer in waits[0]}
    for mode in ("local", "remote"):  # CUDA graphs: per-step medians of each run, then the median run
        splits = [r.decode_split for r in results[mode] if r.decode_split]
        if splits:
            out[f"decode_{mode}_split_ms"] = {k: med([sp[k] for sp in splits]) if not isinstance(splits[0][k], list)
                                              else [med(x) for x in zip(*(sp[k] for sp in splits))] for k in splits[0]}
    graph_split = out.get("decode_remote_split_ms")
    if graph_split:  # under CUDA graphs the GPU's own gaps before the Engram layers' pieces are the wait
        out["decode_exposed_wait_share"] = graph_split["exposed_wait_ms"] / graph_split["step_ms"]
    out["decode_step_ms"] = {mode: 1e3 * med([r.decode_s for r in results[mode]]) / max(1, wl.decode_steps)
                             for mode in ("local", "remote")}
    out["decode_roofline_ms"] = decode_roofline_ms(local, results["local"][0].prefill_tokens, wl, dtype)
    if device.type == "cuda":  # the caching allocator's retries (each frees every cached block, a sync)
        out["cuda_alloc_retries"] = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
    out["device_cache_hit_rate"] = device_stats.hit_rate
    out["host_cache_hit_rate"] = host_stats.hit_rate if host_stats else None
    out["rows_from_host_mirror"] = mirrored[2]
    out["rows_from_store"] = (sum(prefetcher.rows_below_device.values()) - mirrored[2]
                              - (host_stats.hits if host_stats else 0))
    return out
