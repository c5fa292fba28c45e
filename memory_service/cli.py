"""The `engram-memory` command. Each subcommand's flags come from its config dataclass; heavy
modules import only when their subcommand runs, so `--help` is instant."""
from __future__ import annotations

import argparse
import sys

from .store import StoreError


def _demo(args) -> int:
    from model_client.demo import DemoConfig, run
    from model_client.e2e import WorkerConfig
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(DemoConfig, args), dataclass_from_args(WorkerConfig, args))


def _bench_hashing(args) -> int:
    from bench.hashing import HashingBenchConfig, run
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(HashingBenchConfig, args))


def _load(args) -> int:
    from .loader import LoadConfig, run_load
    from model_client.flags import dataclass_from_args
    return run_load(dataclass_from_args(LoadConfig, args))


def _serve(args) -> int:
    from .server import ServiceConfig, serve
    from model_client.flags import dataclass_from_args
    return serve(dataclass_from_args(ServiceConfig, args))


def _info(args) -> int:
    from .info import InfoConfig, run_info
    from model_client.flags import dataclass_from_args
    return run_info(dataclass_from_args(InfoConfig, args))


def _drop(args) -> int:
    from .store import TableStore
    store = TableStore(args.db)
    try:
        store.drop(args.table, args.version, force=args.force)
    finally:
        store.close()
    print(f"dropped {args.table} v{args.version}")
    return 0


def _bench_service(args) -> int:
    from bench.service import ServiceBenchConfig, run
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(ServiceBenchConfig, args))


def _bench_e2e(args) -> int:
    from bench.e2e import run
    from model_client.e2e import WorkerConfig
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(WorkerConfig, args), args.out)


def _bench_hit_rate(args) -> int:
    from bench.hit_rate import HitRateConfig, run
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(HitRateConfig, args))


def _bench_scale(args) -> int:
    from bench.scale import ScaleBenchConfig, run
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(ScaleBenchConfig, args))


def build_parser() -> argparse.ArgumentParser:
    from bench.hashing import HashingBenchConfig
    from bench.service import ServiceBenchConfig
    from model_client.demo import DemoConfig
    from model_client.e2e import WorkerConfig
    from model_client.flags import add_dataclass_flags

    from .info import InfoConfig
    from .loader import LoadConfig
    from .server import ServiceConfig

    parser = argparse.ArgumentParser(
        prog="engram-memory",
        description="Storage-tiered memory for DeepSeek's Engram: hashed N-gram tables served "
                    "outside the GPU process.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the main job end to end on embedded defaults",
        description="Tokenize real text (DeepSeek-V3 tokenizer), hash it into Engram row ids and report "
                    "row reuse and the table geometry of every preset; then create the demo tables in an "
                    "LMDB store (once), start the memory service and run a small model over real text in "
                    "prefill and decode, with local tables and with the service, and compare.")
    add_dataclass_flags(demo, DemoConfig)
    add_dataclass_flags(demo.add_argument_group("end to end (the worker)"), WorkerConfig, skip={"config"})
    demo.set_defaults(func=_demo)

    load = commands.add_parser(
        "load", help="load Engram tables (one per layer) into an LMDB table store",
        description="Create a new version of each Engram layer's table from a checkpoint or a seeded "
                    "random init, verify it and publish it. Readers see the old version or the whole "
                    "new one; a killed load stays visible to `info` as partial and `drop` removes it.")
    add_dataclass_flags(load, LoadConfig)
    load.set_defaults(func=_load)

    serve = commands.add_parser(
        "serve", help="serve a table store over gRPC",
        description="Serve the tables of an LMDB store over gRPC from several processes on one port, "
                    "with health checking, reflection, Prometheus metrics and graceful SIGTERM.")
    add_dataclass_flags(serve, ServiceConfig)
    serve.set_defaults(func=_serve)

    info = commands.add_parser("info", help="list the tables, versions, sizes and checksums of a store",
                               description="List every table version of a store, partial loads included.")
    add_dataclass_flags(info, InfoConfig)
    info.set_defaults(func=_info)

    drop = commands.add_parser("drop", help="remove one table version (a partial load, an old version)",
                               description="Remove one version of a table and free its rows.")
    drop.add_argument("--db", required=True, help="LMDB table store directory")
    drop.add_argument("--table", required=True, help="table name, e.g. layer1")
    drop.add_argument("--version", required=True, type=int, help="version number (see `info`)")
    drop.add_argument("--force", action="store_true", help="also drop the published version")
    drop.set_defaults(func=_drop)

    bench = commands.add_parser("bench", help="measurements, written as JSON",
                                description="Benchmarks; each writes JSON rows with units in key names.")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    hashing = benches.add_parser(
        "hashing", help="hashing throughput, numpy vs torch, and tokenizer compression build time",
        description="Hashing throughput (tokens/s) with numpy and torch on this CPU for 4k- and "
                    "64k-token batches of real text, and the compression table's build time cold "
                    "and from the disk cache.")
    add_dataclass_flags(hashing, HashingBenchConfig)
    hashing.set_defaults(func=_bench_hashing)
    service = benches.add_parser(
        "service", help="memory service rows/s and latency against the in-RAM and store floors",
        description="Rows/s and p50/p99 latency of lookups through a real `engram-memory serve` for "
                    "160 B and 256 B rows, batches of 1 to 65,536 rows, 1 and 4 client processes, "
                    "with the in-RAM np.take floor, the store's own gather and a per-key LMDB loop "
                    "measured in the same run.")
    add_dataclass_flags(service, ServiceBenchConfig)
    service.set_defaults(func=_bench_service)
    e2e = benches.add_parser(
        "e2e", help="demo model tokens/s with remote vs local tables, prefill and decode",
        description="Run the demo model over real text with its tables in memory and with them in the "
                    "memory service (or the co-located LMDB), alternating, and report tokens/s, their "
                    "ratio, exposed wait and cache hit rates. Appends one JSON row to --out.")
    add_dataclass_flags(e2e, WorkerConfig)
    e2e.add_argument("--out", default="bench/results/e2e.json", help="JSON file to append to")
    e2e.set_defaults(func=_bench_e2e)
    hit_rate = benches.add_parser(
        "hit-rate", help="cache hit rates on real text: LRU, the project's policies, Belady's optimum",
        description="Tokenize real corpora, hash them, and replay each Engram layer's row accesses "
                    "through LRU, the project's RowCache policies, lookahead, a two-tier cache, "
                    "Belady's optimum and an infinite cache, for cache sizes from 0.1% to 30% of the "
                    "table. JSON rows and one PNG per corpus.")
    from bench.hit_rate import HitRateConfig
    add_dataclass_flags(hit_rate, HitRateConfig)
    hit_rate.set_defaults(func=_bench_hit_rate)
    scale = benches.add_parser(
        "scale", help="the service as the table outgrows RAM: throughput, latency, disk reads",
        description="Tables of growing size (default 1 to 32 GiB) served from a cold page cache to "
                    "clients replaying real text through a 1% device cache: rows/s, latency, disk "
                    "reads and page-cache misses per size. JSON and a PNG.")
    from bench.scale import ScaleBenchConfig
    add_dataclass_flags(scale, ScaleBenchConfig)
    scale.set_defaults(func=_bench_scale)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"engram-memory {args.command}: error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"engram-memory {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
