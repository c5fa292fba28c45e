"""`engram-memory bench kernels`: each Triton kernel against its PyTorch reference and against the
GPU's memory bandwidth, at a decode shape (512 sequences x 1 token) and a prefill shape (64 x 1,024).

Times are CUDA-event medians from triton.testing.do_bench (L2 flushed between runs) of CUDA-graph
replays where the op can be captured (else eager launches), the kernel and
its reference alternating in one process. Bandwidth share = bytes the operation must move (listed
per kernel below; index and metadata traffic included, caches not credited) / time / --bandwidth.
Geometry: the demo config (2 Engram layers, 16 columns, head_dim 64) with bf16 rows (128 B), and
fp8 rows (64 e4m3 bytes + 2 ue8m0 scales = 66 B) for the dequantizing gather; the gate at the demo
width (hidden 1,024, 4 branches, bf16).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .report import machine, write_rows

SHAPES = {"decode": (512, 1), "prefill": (64, 1024)}


@dataclass
class KernelBenchConfig:
    bandwidth_tbs: float = field(default=4.3, metadata={
        "help": "the memory bandwidth limit to compare with, TB/s (H200: 4.8 peak, ~4.3 reachable)"})
    cache_mb: int = field(default=1024, metadata={"help": "device row cache for the probe/insert kernels, MiB"})
    out: str = field(default="bench-out/kernels_h200.json", metadata={"help": "JSON output path; bench-out/ is not tracked (the committed figures are in bench/results/)"})

    def __post_init__(self):
        if self.bandwidth_tbs <= 0 or self.cache_mb < 1:
            raise ValueError("KernelBenchConfig.bandwidth_tbs and cache_mb must be positive")


def _time_ms(fn) -> tuple[float, str]:
    """Median GPU time of fn: replayed from a CUDA graph when fn can be captured (no launch overhead:
    Triton's Python launcher alone takes 20-50 us on the H200 host, more than most of these kernels),
    else launched directly (ops that sync, e.g. boolean-mask indexing, cannot be captured)."""
    import torch
    from triton.testing import do_bench
    fn()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return do_bench(graph.replay, warmup=20, rep=200, return_mode="median"), "cuda graph"
    except Exception:  # noqa: BLE001 - not capturable: time the eager launches
        torch.cuda.synchronize()
        return do_bench(fn, warmup=20, rep=200, return_mode="median"), "eager"


def _warm_up_gpu(seconds: float = 2.0) -> None:
    """Bring an idle GPU to its working clocks before timing anything."""
    import time

    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        torch.cuda.synchronize()


def _hashing(hasher, B, T):
    import torch

    from kernels.hashing import hash_layers, hash_layers_reference
    c = hasher._consts("cuda")
    ids = torch.randint(0, hasher.tokenizer.vocab_size, (B, T), device="cuda")
    look = torch.full((B, 2), hasher.pad_id, dtype=torch.int64, device="cuda")
    args = (ids, look, c["mult"], c["primes"], c["offsets"], c["lookup"])
    L, C = c["primes"].shape
    moved = B * T * (8 + 8 + 2 * L * C * 8)   # id, its compressed id, indices and row ids written
    return lambda: hash_layers(*args), lambda: hash_layers_reference(*args), moved


def _cache_ops(cfg, config, B, T):
    """(probe, insert) workloads on a warm cache: the step's distinct ids (tokens x columns), half
    of them cached; inserts of fresh misses cycle through prepared batches."""
    import torch

    from model_client.row_cache import RowCache
    n = B * T * config.num_columns
    cache = RowCache(cfg.cache_mb << 20, 128, "cuda", "lru")
    ids = torch.randint(0, 1 << 40, (n,), device="cuda").unique()
    half = ids[: len(ids) // 2]
    cache.lookup(half)
    cache.insert(half, torch.zeros(len(half), 128, dtype=torch.uint8, device="cuda"))
    fresh = [torch.randint(0, 1 << 40, (len(ids) // 2,), device="cuda").unique() for _ in range(8)]
    rows = torch.randint(0, 255, (len(ids), 128), dtype=torch.uint8, device="cuda")
    state = {"i": 0}

    def probe():
        cache.lookup(ids)

    def insert():
        batch = fresh[state["i"] % len(fresh)]
        state["i"] += 1
        cache.tick += 1
        cache.insert(batch, rows[:len(batch)])

    W = cache.ways
    probe_bytes = len(ids) * (8 + W * 8 + 1 + 8) + len(half) * 8 * 5       # + the hits' stamp/uses/pins r/w
    m = len(ids) // 2
    insert_bytes = m * (16 + W * (8 * 3 + 4) + 8 + 8 * 3 + 2 * 128 + 8 * 4 + 1 + 8)  # sort traffic not counted
    return probe, insert, probe_bytes, insert_bytes


def _gather(config, B, T, row_dtype):
    import numpy as np
    import torch

    from core.row_format import RowFormat
    from kernels.gather import gather_rows, gather_rows_reference
    fmt = RowFormat(row_dtype, config.head_dim)
    n = B * T * config.num_columns
    unique = max(1, int(n * 0.6))                     # real text: ~60% of a batch's rows are distinct
    values = np.random.default_rng(0).standard_normal((4096, config.head_dim)).astype(np.float32)
    pool = torch.from_numpy(fmt.encode(values)).cuda()
    cache = pool[torch.randint(0, 4096, (1 << 20,), device="cuda")]        # 1M cached slots
    fetched = pool[torch.randint(0, 4096, (unique // 3 + 1,), device="cuda")]
    loc = torch.randint(0, 1 << 20, (unique,), device="cuda")
    missing = torch.rand(unique, device="cuda") < 1 / 3
    loc = torch.where(missing, -1 - torch.randint(0, len(fetched), (unique,), device="cuda"), loc)
    inverse = torch.randint(0, unique, (n,), device="cuda")
    args = (cache, fetched, loc, inverse, row_dtype, config.head_dim, torch.bfloat16)
    moved = n * (8 + 8 + fmt.row_bytes + config.head_dim * 2)   # inverse, loc, the row, the bf16 output
    return lambda: gather_rows(*args), lambda: gather_rows_reference(*args), moved


def _gate(config, B, T):
    import torch

    from kernels.gate import gate, gate_reference
    M, D = config.hc_mult, config.hidden_size
    make = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    args = (make(B, T, M, D), make(B, T, M, D), make(B, T, D), make(M, D), make(M, D), 2 ** -7, 2 ** -7)
    moved = B * T * (3 * M * D + D) * 2      # key and hidden read, output written per branch; value once
    return lambda: gate(*args), lambda: gate_reference(*args), moved


def run(cfg: KernelBenchConfig) -> int:
    import torch

    from model_client import EngramConfig, NgramHasher
    if not torch.cuda.is_available():
        raise SystemExit("bench kernels needs a CUDA GPU (the references alone say nothing)")
    config = EngramConfig.preset("demo").replace(row_dtype="bfloat16")
    hasher = NgramHasher(config)
    rows, info = [], {**machine(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    limit = cfg.bandwidth_tbs * 1e12
    _warm_up_gpu()
    for shape, (B, T) in SHAPES.items():
        probe, insert, probe_bytes, insert_bytes = _cache_ops(cfg, config, B, T)
        cases = {"hashing": _hashing(hasher, B, T),
                 "cache_probe": (probe, probe, probe_bytes), "cache_insert": (insert, insert, insert_bytes),
                 "gather_bf16": _gather(config, B, T, "bfloat16"), "gather_fp8": _gather(config, B, T, "fp8-e4m3"),
                 "gate": _gate(config, B, T)}
        for name, (kernel, reference, moved) in cases.items():
            import kernels
            with kernels.backend("triton"):
                kernel_ms, kernel_timing = _time_ms(kernel)
            with kernels.backend("reference"):
                reference_ms, reference_timing = _time_ms(reference)
            filled = torch.empty(moved, dtype=torch.uint8, device="cuda")
            fill_ms, _ = _time_ms(lambda: filled.fill_(1))
            row = {"kernel": name, "shape": shape, "batch": B, "tokens_per_seq": T,
                   "kernel_us": kernel_ms * 1e3, "reference_us": reference_ms * 1e3,
                   "kernel_timing": kernel_timing, "reference_timing": reference_timing,
                   "speedup": reference_ms / kernel_ms, "bytes_moved": moved,
                   "kernel_bandwidth_share": moved / (kernel_ms * 1e-3) / limit,
                   # torch's fill_ writing as many bytes: what one kernel of this size reaches at best
                   "fill_tb_per_s": moved / (fill_ms * 1e-3) / 1e12, **info}
            rows.append(row)
            print(f"{shape:<8} {name:<13} kernel {row['kernel_us']:9.1f} us  reference {row['reference_us']:9.1f} us"
                  f"  x{row['speedup']:6.2f}  {row['kernel_bandwidth_share']:6.1%} of {cfg.bandwidth_tbs} TB/s"
                  f"  (fill_ of as many bytes: {row['fill_tb_per_s']:.2f} TB/s)",
                  flush=True)
    print(f"wrote {write_rows(rows, cfg.out)}")
    return 0
