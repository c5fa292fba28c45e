"""bench/policy_lab: the lab's batch-semantics LRU and LFU are RowCache's exactly (driven as
bench/serving_replay.py's decode drives it: host_index.plan on an index without rows; the first lab's
ranking of the pass's hits, pin_scored, differs under LFU only), its best decode policy beats LRU on a
skewed trace and stays within a point of RowCache's tinylfu (which implements it), its decode traces
are ServingReplay's passes, and its command line runs end to end."""
import itertools

import numpy as np
import pytest
import torch

from bench.policy_lab import lab, sim
from bench.policy_lab import traces as tr
from bench.policy_lab.__main__ import main
from bench.policy_lab.policies import P
from core.corpus import PACKAGED_SAMPLE
from model_client import host_index
from model_client.row_cache import RowCache

WAYS, ROW_BYTES = 16, 128
ROWCACHE = {"lru": "lru", "lfu-d1024": "lfu", "sk16-lfu-merge": "tinylfu"}


@pytest.fixture(scope="module")
def zipf_passes():
    """2,500 passes of the distinct ids among 256 Zipf(1.1) draws over 200,000 ids scattered in [0, 2**34):
    enough passes for LFU's counts to halve twice (every 1,024) and the sketch to halve often."""
    rng = np.random.default_rng(17)
    universe = rng.choice(1 << 34, 200_000, replace=False).astype(np.int64)
    ranks = np.minimum(rng.zipf(1.1, (2500, 256)), len(universe)) - 1
    passes = [np.unique(universe[r]) for r in ranks]
    bounds = np.r_[0, np.cumsum([len(p) for p in passes])].astype(np.int64)
    return np.concatenate(passes), bounds


def rowcache_hits(ids, bounds, cap_rows, policy):
    """(hits per access, stats) of a RowCache of cap_rows rows replaying the passes as decode does."""
    cache = RowCache(cap_rows * ROW_BYTES, ROW_BYTES, "cpu", policy, ways=WAYS, decay_every=1024,
                     kernels=False, rows=False)
    hits = [host_index.plan(cache, torch.from_numpy(ids[lo:hi]))[0].numpy()
            for lo, hi in itertools.pairwise(bounds)]
    return np.concatenate(hits), cache.stats


def lab_hits(ids, bounds, cap_rows, name):
    return sim.simulate(ids, bounds, cap_rows, ways=WAYS, **lab.resolve(P[name], cap_rows))[1]


@pytest.mark.parametrize("name", ["lru", "lfu-d1024"])
@pytest.mark.parametrize("sets", [64, 37])
def test_batch_semantics_are_rowcaches(zipf_passes, name, sets):
    ids, bounds = zipf_passes
    cap = sets * WAYS
    expected, stats = rowcache_hits(ids, bounds, cap, ROWCACHE[name])
    got = lab_hits(ids, bounds, cap, name)
    assert stats.evictions > len(ids) // 10   # the cache is under pressure
    assert int(got.sum()) == stats.hits
    assert np.array_equal(got, expected)      # access for access


def test_pin_scored_is_the_first_labs_ranking(zipf_passes):
    """The first lab ranked the slots hit in a pass by their scores: the same under LRU, not under LFU."""
    ids, bounds = zipf_passes
    cap = 64 * WAYS
    first = sim.simulate(ids, bounds, cap, ways=WAYS, score=0, rank=1, pin_scored=1)[1]
    assert np.array_equal(first, lab_hits(ids, bounds, cap, "lru"))
    assert not np.array_equal(lab_hits(ids, bounds, cap, "lfu-d1024-pin-scored"), lab_hits(ids, bounds, cap, "lfu-d1024"))


def test_sketch_lfu_merge_beats_lru_and_is_near_tinylfu(zipf_passes):
    ids, bounds = zipf_passes
    cap = 64 * WAYS
    rate = {name: lab_hits(ids, bounds, cap, name).mean() for name in ("lru", "lfu-d1024", "sk16-lfu-merge")}
    assert rate["sk16-lfu-merge"] > rate["lru"] + 0.05, rate
    assert rate["sk16-lfu-merge"] > rate["lfu-d1024"], rate
    tinylfu = rowcache_hits(ids, bounds, cap, "tinylfu")[0].mean()
    # the same policy, but the lab's sketch has its own hash, a power-of-two width and halves mid-pass
    # (measured on this trace: tinylfu 0.5697, the lab 0.5695)
    assert abs(tinylfu - rate["sk16-lfu-merge"]) < 0.01, (tinylfu, rate)


@pytest.fixture(scope="module")
def sample_traces(tmp_path_factory):
    """Decode traces of the packaged sample's first 16,384 tokens (64 streams x 256 passes)."""
    out = tmp_path_factory.mktemp("policy_lab")
    assert main(["extract", "--corpus", str(PACKAGED_SAMPLE), "--tokens", "16384", "--traces", str(out)]) == 0
    return out


def test_decode_traces_are_serving_replays_passes(sample_traces):
    from bench.hit_rate import HitRateConfig, corpus_sequences, make_hasher
    from bench.serving_replay import ServingReplay
    cfg = HitRateConfig(tokens=16384)
    hasher = make_hasher(cfg)
    seqs = corpus_sequences(cfg, str(PACKAGED_SAMPLE), hasher)
    replay = ServingReplay(hasher, 0.001, "lfu")
    replay.decode(seqs.reshape(64, -1))
    tag = tr.tag_of(str(PACKAGED_SAMPLE))
    for layer in replay.layers:
        ids, bounds, total, tokens = tr.load(sample_traces, tag, 16384, layer)
        assert tokens == 16384 and len(bounds) == 257
        assert np.array_equal(np.concatenate(replay.result(layer).passes), ids)
        cache = replay.cache(layer)
        cap = sim.capacity_rows(total, 0.001)
        assert cap == cache.capacity_rows
        assert int(lab_hits(ids, bounds, cap, "lfu-d1024").sum()) == cache.stats.hits > 0


def test_command_line(sample_traces, capsys):
    tag = tr.tag_of(str(PACKAGED_SAMPLE))
    common = ["--traces", str(sample_traces), "--tokens", "16384", "--corpora", tag, "--fracs", "0.001,0.01"]
    assert main(["run", *common, "lru", "sk16-lfu-merge"]) == 0
    assert main(["bounds", *common, "--kind", "ttl", "--features", "none,all"]) == 0
    assert main(["bounds", *common, "--kind", "static"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = [line for line in out if line.startswith("#")]
    assert len(header) == 2 and all(f"# {tag} decode 16384 layer 1 frac" in line for line in header)
    rows = {line.split()[0]: line for line in out if line.split()[0] in ("lru", "sk16-lfu-merge")}
    assert set(rows) == {"lru", "sk16-lfu-merge"}
    assert sum("TTL-oracle" in line for line in out) == 4 and sum("static top-C" in line for line in out) == 2
    assert (sample_traces / "belady.json").is_file()
    assert main(["run", *common, "no-such-policy"]) == 2
