"""The lab's command line: python -m bench.policy_lab {extract,run,prefill,bounds} ... (--help on each)."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time

from . import traces as tr

DESCRIPTION = """Cache policies replayed offline over per-pass deduplicated row-id traces (issue 17).
First extract traces from a corpus, then run named policies (or bounds) over them. Hit rates are
layer --layer's, at cache sizes --fracs of all Engram tables (split evenly between the layers, as a
worker's device cache is), each with its share of Belady's MIN of that size."""

EXTRACT = """Hash a corpus with the project's hasher (bench.hit_rate: the demo EngramConfig, sequences of
1,024 tokens) and write each layer's passes as DIR/<tag>_<mode>_<tokens>.npz (tag: the file's name
before its first dot, e.g. brown, msra_news). decode: 64 streams stepping together, one token each a
pass (ServingReplay.decode); prefill: 64 prompts a pass (ServingReplay.prefill). Corpora resolve as
bench hit-rate's do: a file, or a name under the shared corpora ($ENGRAM_CORPORA), e.g.
  extract --corpus en/brown.txt --tokens 1048576 --mode decode"""

RUN = """Replay named policies over decode traces (already extracted) and print, per corpus and
fraction, the hit rate and its share of Belady's MIN (kept in DIR/belady.json), e.g.
  run --tokens 1048576 --corpora brown,msra_news lru lfu-d1024 sk16-lfu-merge
  run --tokens 204800 --corpora brown --fracs 0.01 --define '{"sk4-r10": {"score": 2, "sk_rel": 4, "reset_rel": 10}}'
Policies (bench/policy_lab/policies.py; lru and lfu-d1024 are RowCache's lru and lfu exactly;
sk16-lfu-merge is what RowCache's tinylfu implements):"""

PREFILL = """As run, over prefill traces (extract --mode prefill), e.g.
  prefill --tokens 1048576 --corpora brown lru sk16-lfu-merge"""

BOUNDS = """Upper bounds and breakdowns over a decode trace, e.g.
  bounds --tokens 1048576 --corpora brown --kind ttl --features none,k,gap,all,fut,prior:gutenberg
kinds: ttl (per-class optimal TTLs under the capacity, classes from --features: none | k (reads so
far) | gap (passes since the previous read) | all (k and gap) | fut / futall (+ the id's count in
the whole trace) | prior:SOURCE / all:SOURCE (+ its count in another text: gutenberg, brown_tail,
msra_tail); learned on the trace itself, optimistic); breakdown (Belady's and slot-LFU's hits by
n-gram order, reuse distance and trace count); static (the best fixed set of rows, by true counts)."""


def _common(p: argparse.ArgumentParser, tokens_default: int = 1048576, corpora: bool = True) -> None:
    p.add_argument("--traces", default=tr.DEFAULT_DIR, metavar="DIR",
                   help=f"where traces, priors and belady.json are written and read (default {tr.DEFAULT_DIR})")
    p.add_argument("--tokens", type=int, default=tokens_default, help="tokens of the corpus's trace (default %(default)s)")
    if corpora:
        p.add_argument("--corpora", default="brown,msra_news",
                       help="comma-separated trace tags (default %(default)s)")
        p.add_argument("--layer", type=int, default=1, help="Engram layer (default %(default)s)")
        p.add_argument("--fracs", default="0.01,0.05", help="cache sizes, fractions of all tables (default %(default)s)")


def parser() -> argparse.ArgumentParser:
    from .policies import P
    top = argparse.ArgumentParser(prog="python -m bench.policy_lab", description=DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="{extract,run,prefill,bounds}")
    kw = dict(formatter_class=argparse.RawDescriptionHelpFormatter)
    p = sub.add_parser("extract", help="write traces of a corpus", description=EXTRACT, **kw)
    _common(p, corpora=False)
    p.add_argument("--corpus", action="append", default=None,
                   help="a file or a shared-corpora name; repeatable (default: en/brown.txt and zh/msra_news.txt, "
                        "or the packaged English sample when the shared corpora are absent)")
    p.add_argument("--mode", choices=("decode", "prefill"), default="decode", help="passes as (default %(default)s)")
    names = textwrap.fill(", ".join(P), 100, initial_indent="  ", subsequent_indent="  ",
                          break_on_hyphens=False)
    for name, text, short in (("run", RUN + "\n" + names, "replay named policies over decode traces"),
                              ("prefill", PREFILL, "the same over prefill traces")):
        p = sub.add_parser(name, help=short, description=text, **kw)
        _common(p)
        p.add_argument("--define", default="", metavar="JSON",
                       help='more policies: {"name": {kwargs}} (sim.params names, ways, sk_rel, reset_rel, prior)')
        p.add_argument("policies", nargs="*", metavar="POLICY", help="names in policies.P")
    p = sub.add_parser("bounds", help="upper bounds (TTL oracle, static oracle) and hit breakdowns",
                       description=BOUNDS, **kw)
    _common(p)
    p.add_argument("--kind", choices=("ttl", "breakdown", "static"), default="ttl", help="(default %(default)s)")
    p.add_argument("--features", default="all", help="ttl: comma-separated feature sets (default %(default)s)")
    return top


def extract(args) -> int:
    corpora = args.corpus
    if not corpora:
        from bench.hit_rate import HitRateConfig, default_corpora
        corpora = default_corpora(HitRateConfig()).corpora
    for corpus in corpora:
        tr.extract(corpus, args.tokens, args.mode, args.traces)
    return 0


def run(args, mode: str) -> int:
    from . import lab
    from .policies import P, prior_for
    named = {**{n: P[n] for n in args.policies if n in P}, **(json.loads(args.define) if args.define else {})}
    unknown = [n for n in args.policies if n not in named]
    if unknown or not named:
        print(f"unknown or no policies {unknown}; known: {', '.join(P)}", file=sys.stderr)
        return 2
    tags, fracs = args.corpora.split(","), tuple(float(f) for f in args.fracs.split(","))
    for tag in tags:
        for frac in fracs:
            b = lab.belady(args.traces, tag, args.tokens, args.layer, frac, mode)
            print(f"# {tag} {mode} {args.tokens} layer {args.layer} frac {frac}: belady {b['belady']:.4f} "
                  f"infinite {b['infinite']:.4f} cap {b['cap']}", flush=True)
    for name in args.policies or named:
        kw = named[name]
        row = []
        for tag in tags:
            t0 = time.time()
            r = lab.evaluate(args.traces, tag, args.tokens, kw, args.layer, fracs,
                             prior_fn=prior_for(kw, args.traces, args.tokens, mode), mode=mode)
            row.append(f"{tag}: " + "  ".join(f"{r[f][0]:.4f} ({r[f][1]:.1%})" for f in r) + f" [{time.time()-t0:.0f}s]")
        print(f"{name:<34} " + " | ".join(row), flush=True)
    return 0


def bounds(args) -> int:
    from . import breakdown, static_oracle, ttl_oracle
    fracs = tuple(float(f) for f in args.fracs.split(","))
    for tag in args.corpora.split(","):
        if args.kind == "ttl":
            lines = [x for feat in args.features.split(",")
                     for x in ttl_oracle.report(args.traces, tag, args.tokens, feat, args.layer, fracs)]
        else:
            lines = (breakdown if args.kind == "breakdown" else static_oracle).report(
                args.traces, tag, args.tokens, args.layer, fracs)
        for line in lines:
            print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "extract":
        return extract(args)
    if args.command in ("run", "prefill"):
        return run(args, "decode" if args.command == "run" else "prefill")
    return bounds(args)


if __name__ == "__main__":
    sys.exit(main())
