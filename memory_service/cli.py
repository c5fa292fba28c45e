"""The `engram-memory` command. Each subcommand's flags come from its config dataclass; heavy
modules import only when their subcommand runs, so `--help` is instant."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from model_client.demo import DemoConfig, run
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(DemoConfig, args))


def _bench_hashing(args) -> int:
    from bench.hashing import HashingBenchConfig, run
    from model_client.flags import dataclass_from_args
    return run(dataclass_from_args(HashingBenchConfig, args))


def build_parser() -> argparse.ArgumentParser:
    from bench.hashing import HashingBenchConfig
    from model_client.demo import DemoConfig
    from model_client.flags import add_dataclass_flags

    parser = argparse.ArgumentParser(
        prog="engram-memory",
        description="Storage-tiered memory for DeepSeek's Engram: hashed N-gram tables served "
                    "outside the GPU process.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the main job end to end on embedded defaults",
        description="Tokenize real text (DeepSeek-V3 tokenizer), hash it into Engram row ids and "
                    "report row reuse and the table geometry of every preset.")
    add_dataclass_flags(demo, DemoConfig)
    demo.set_defaults(func=_demo)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"engram-memory {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
