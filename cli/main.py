"""The `engram-memory` command. Each subcommand's flags come from its config dataclass (one per
process type); the module that does the work is imported only when its subcommand runs."""
from __future__ import annotations

import argparse
import importlib
import sys

from core.store import StoreError

# name: (config "module:Class", runner "module:function", one-line help, description)
COMMANDS = {
    "demo": ("cli.demo:DemoCommand", "cli.demo:run_command",
             "run the main job end to end on embedded defaults",
             "Tokenize real text (DeepSeek-V3 tokenizer), hash it into Engram row ids and report row reuse "
             "and the table geometry of every preset; then create the demo tables in an LMDB store "
             "(once), start the memory service and run a small model over real text in prefill and "
             "decode, with local tables and with the service, and compare."),
    "worker": ("model_client.worker:WorkerLoopConfig", "model_client.worker:run",
               "a model worker serving the demo workload from the memory service",
               "Run the demo model round after round over real text with every Engram row from the "
               "memory service (device cache in front), printing one JSON line per round; waits and "
               "retries while the service is down. This is what docker-compose scales."),
    "load": ("memory_service.loader:LoadConfig", "memory_service.loader:run_load",
             "load Engram tables (one per layer) into an LMDB table store",
             "Create a new version of each Engram layer's table from a checkpoint or a seeded random "
             "init, verify it and publish it. Readers see the old version or the whole new one; a "
             "killed load stays visible to `info` as partial and `drop` removes it."),
    "serve": ("memory_service.server:ServiceConfig", "memory_service.server:serve",
              "serve a table store over gRPC",
              "Serve the tables of an LMDB store over gRPC from several processes on one port, with "
              "health checking, reflection, Prometheus metrics and graceful SIGTERM."),
    "info": ("memory_service.info:InfoConfig", "memory_service.info:run_info",
             "list the tables, versions, sizes and checksums of a store",
             "List every table version of a store, partial loads included."),
    "health": ("memory_service.health:HealthConfig", "memory_service.health:run_health",
               "exit 0 if the memory service answers SERVING (a container healthcheck)",
               "Ask a memory service's gRPC health service; exit 0 on SERVING, 1 otherwise."),
    "stats": ("model_client.stats_command:StatsConfig", "model_client.stats_command:run_stats",
              "what each process of a running memory service has served",
              "Ask a running memory service's Stats over several connections (one server process answers "
              "each) and print requests, errors, rows and bytes served per process."),
    "drop": ("memory_service.info:DropConfig", "memory_service.info:run_drop",
             "remove one table version (a partial load, an old version)",
             "Remove one version of a table and free its rows."),
    "train": ("training.train_config:TrainConfig", "training.trainer:run",
              "train the demo backbone with Engram tables sharded over processes",
              "Train the demo backbone with Engram layers on the shared corpora (DeepSeek-V3 tokenizer, "
              "validation held out by document). Each process owns 1/N of every table's rows (gloo on "
              "CPU, NCCL on GPU): a step sends each row id to its owner, gathers the rows and returns "
              "their gradients, and the owner takes a sparse Adam step. Writes safetensors shards + "
              "an index that `load --from` reads, resumable train state and metrics.json."),
    "gate": ("training.gate_map:GateConfig", "training.gate_map:run",
             "draw where a trained model's Engram gate opens (PNG + HTML)",
             "Run a trained checkpoint over texts and draw each Engram layer's gate per token (a PNG "
             "heatmap and an HTML page of colored tokens), then compare the mean gate on held-out "
             "tokens that complete a fixed phrase (frequent, high-PMI token pairs) with all others."),
    "merge": ("training.checkpoint_writer:MergeConfig", "training.checkpoint_writer:run_merge",
              "stitch a sharded training checkpoint into one safetensors file",
              "Read a checkpoint's model.safetensors.index.json and write one .safetensors file with "
              "every tensor whole (the tables' row shards in order) and the same metadata."),
}
BENCHES = {
    "hashing": ("bench.hashing:HashingBenchConfig", "bench.hashing:run",
                "hashing throughput, numpy vs torch, and tokenizer compression build time",
                "Hashing throughput (tokens/s) with numpy and torch for 4k- and 64k-token batches of "
                "real text, and the compression table's build time cold and from the disk cache."),
    "service": ("bench.service:ServiceBenchConfig", "bench.service:run",
                "memory service rows/s and latency against the in-RAM and store floors",
                "Rows/s and p50/p99 latency of lookups through a real `engram-memory serve` for 160 B "
                "and 256 B rows, batches of 1 to 65,536 rows, 1 and 4 client processes, with the "
                "in-RAM np.take floor, the store's own gather and a per-key LMDB loop in the same run."),
    "e2e": ("bench.e2e:E2EBenchConfig", "bench.e2e:run",
            "demo model tokens/s with remote vs local tables, prefill and decode",
            "Run the demo model over real text with its tables in memory and with them in the memory "
            "service (or the co-located LMDB), alternating, and report tokens/s, their ratio, exposed "
            "wait and cache hit rates. Appends one JSON row to --out."),
    "workers": ("bench.shared_service:SharedServiceBenchConfig", "bench.shared_service:run",
                "several model workers (one per GPU) sharing one memory service: aggregate tokens/s",
                "Load the tables once and start one memory service; then run 1, 2, ... (--worker-counts) "
                "model worker processes at once, worker i on GPU i (the cores split between them on a "
                "CPU), each running the e2e comparison against that service with runs started together: "
                "aggregate tokens/s against one worker, each worker's ratio to local tables, outputs "
                "bit-compared."),
    "hit-rate": ("bench.hit_rate:HitRateConfig", "bench.hit_rate:run",
                 "cache hit rates on real text: LRU, the project's policies, Belady's optimum",
                 "Tokenize real corpora, hash them, and replay each Engram layer's row accesses through "
                 "LRU, the project's RowCache policies, lookahead, a two-tier cache, Belady's optimum "
                 "and an infinite cache, for cache sizes from 0.1% to 30% of the table."),
    "kernels": ("bench.kernels:KernelBenchConfig", "bench.kernels:run",
                "each Triton kernel vs its PyTorch reference and the GPU's memory bandwidth (CUDA)",
                "Time the hashing, cache probe/insert, gather (bf16 and fp8 rows) and gate kernels "
                "against their PyTorch references at a decode shape (512 x 1 tokens) and a prefill "
                "shape (64 x 1,024), with bytes moved / time as a share of the memory bandwidth."),
    "failover": ("bench.failover:FailoverBenchConfig", "bench.failover:run",
                 "a sharded, replicated service under kill -9 and a bounded soak",
                 "Shards x replicas of real servers on loopback, client processes reading through "
                 "ClusterClient and checking every row against the source, one replica killed with "
                 "SIGKILL every --kill-every-s and restarted: requests, failed requests, wrong rows, "
                 "failovers, worst failover latency, resident memory at start and end."),
    "load": ("bench.load:LoadBenchConfig", "bench.load:run",
             "many clients at once: calls lost, wrong rows, streams turned away",
             "MemoryClients (each with several channels and lookup streams) spread over client processes, "
             "looking up random rows of a real table in a loop, every row checked: calls, lost calls, "
             "wrong rows, latency, and how many streams the server replaced or refused. Exit 1 if any "
             "call was lost."),
    "train-world": ("bench.train_world:TrainWorldBenchConfig", "bench.train_world:run",
                    "`engram-memory train` at several world sizes: equal losses, step time, exchange share",
                    "Train the same model on the same global batches at each --world-sizes (tables sharded "
                    "by rows; gloo on CPU, NCCL on GPU), check the losses agree step for step with the "
                    "first, and report each size's median step time, its ratio to the first and the share "
                    "of the step spent exchanging rows and gradients. Exit 1 if a loss differs beyond the "
                    "CPU test's tolerance."),
    "scale": ("bench.scale:ScaleBenchConfig", "bench.scale:run",
              "a table larger than RAM from a cold page cache, against fio on the same file",
              "A table of 1.5x this machine's RAM (--sizes-gb) served from a cold page cache by each "
              "read path (--read-modes) at decode- and prefill-sized requests (--request-rows): a cold "
              "phase where every row is a disk read, as a ratio of fio's 4 KiB random-read IOPS at the "
              "same queue depth (/proc/diskstats), and a trace phase replaying real text through a 1% "
              "device cache (device- and page-cache hit rates). p50/p99 per request; every row checked "
              "against the loaded values. Needs fio (apt-get install fio). JSON and a PNG."),
}


def _load_attr(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _add(sub, name: str, entry, with_flags: bool) -> None:
    """A subcommand; its flags (which import its config module) only for the one being run, so the
    memory service's image runs `serve` without torch installed."""
    from core.flags import add_dataclass_flags
    config, runner, help_text, description = entry
    parser = sub.add_parser(name, help=help_text, description=description)
    if with_flags:
        add_dataclass_flags(parser, _load_attr(config))
    parser.set_defaults(entry=entry, subparser=parser)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    bench = words[1] if command == "bench" and len(words) > 1 else None
    parser = argparse.ArgumentParser(
        prog="engram-memory",
        description="Storage-tiered memory for DeepSeek's Engram: hashed N-gram tables served "
                    "outside the GPU process.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in COMMANDS.items():
        _add(commands, name, entry, name == command)
    bench_parser = commands.add_parser("bench", help="measurements, written as JSON",
                                       description="Benchmarks; each writes JSON rows with units in key names.")
    benches = bench_parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, entry in BENCHES.items():
        _add(benches, name, entry, name == bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.flags import dataclass_from_args, given_flags, in_flag_terms
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    config, runner, _, _ = args.entry
    command = args.command + (f" {args.bench}" if args.command == "bench" else "")
    cls = None
    try:
        cls = _load_attr(config)
        return _load_attr(runner)(dataclass_from_args(cls, args, given_flags(args.subparser, argv)))
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, StoreError) as e:
        print(f"engram-memory {command}: error: {in_flag_terms(str(e), cls) if cls else e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional extra that is not installed
        extra = {"numba": "bench", "matplotlib": "bench", "torch": "worker", "triton": "kernels",
                 "safetensors": "dev"}.get((e.name or "").split(".")[0])
        hint = f": pip install 'engram-memory[{extra}]'" if extra else ""
        print(f"engram-memory {command}: error: this needs the package {e.name}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
