"""policy_lab: cache policies for decode and prefill, replayed offline (issue 17).

A numba replay of a set-associative row cache (RowCache's set hash and batch semantics) over
per-pass deduplicated row-id traces, built from real text exactly as bench/serving_replay.py builds
its passes. Every policy tried is kept by name (policies.py); the best for decode, sk16-lfu-merge,
became RowCache's "tinylfu".

    python -m bench.policy_lab extract --corpus en/brown.txt --tokens 1048576 --mode decode
    python -m bench.policy_lab run --tokens 1048576 --corpora brown,msra_news lru sk16-lfu-merge
    python -m bench.policy_lab prefill --tokens 1048576 --corpora brown lru sk16-lfu-merge
    python -m bench.policy_lab bounds --tokens 1048576 --corpora brown --kind ttl --features all

Modules: traces (extraction, loading), sim (the replay loop and its params), insert (how a pass's
misses enter), scores (victim scores, admission), sketch (the count-min sketch), policies (the named
experiments), lab (evaluation against Belady's MIN), prior (static priors from other text),
ttl_oracle, breakdown and static_oracle (bounds). Traces, priors and belady.json live in --traces
(default bench-out/policy_lab/traces; bench-out/ is not tracked). Needs numba (the bench extra).
"""
