"""One contract for every tier (tier.py): cache (as device and as host tier), host mirror, co-located
LMDB, remote service; and the stack build_tiers composes."""
import numpy as np
import pytest
import torch

from core.errors import BadRowIds
from model_client import MemoryClient
from model_client.cache_tier import CacheTier
from model_client.host_mirror import HostMirror
from model_client.service_tier import ServiceTier
from model_client.store_tier import StoreTier
from model_client.tier import fetch
from model_client.tier_stack import TierConfig, build_tiers

from ..served import expected_rows, tiny_config

TABLE, ROW_BYTES = "layer2", 80  # bfloat16 x 40
V = 1                            # the version fill_store publishes


@pytest.fixture(params=["device-cache", "host-cache", "host-mirror", "lmdb", "service"])
def tier(request, served_store):
    server, db, _ = served_store
    rows = torch.from_numpy(expected_rows(2))
    if request.param.endswith("cache"):
        t = CacheTier(request.param, 1 << 20, {TABLE: ROW_BYTES}, {TABLE: V}, pin_memory=request.param == "host-cache")
        t.put_many(TABLE, torch.arange(0, 6000, 3), rows[0:6000:3], V)  # holds every third row
    elif request.param == "host-mirror":             # the whole table, copied from the service
        source = ServiceTier(MemoryClient(server.target))
        t = HostMirror(1 << 20, [TABLE], source, {TABLE: V}, progress=False)
        assert t.holds(TABLE) and t.nbytes == len(rows) * ROW_BYTES
    elif request.param == "lmdb":
        t = StoreTier(str(db))
    else:
        t = ServiceTier(MemoryClient(server.target))
    yield request.param, t
    t.close()


def test_tier_contract(tier):
    name, t = tier
    expect = expected_rows(2)
    ids = torch.arange(0, 3000, 3)                       # distinct, all held by every tier
    out = torch.full((len(ids), ROW_BYTES), 7, dtype=torch.uint8)
    found = t.get_many(TABLE, ids, out, V)
    assert found.dtype == torch.bool and found.all()
    np.testing.assert_array_equal(out.numpy(), expect[ids.numpy()])  # written into the caller's buffer
    others = torch.tensor([1, 2, 4])
    out = torch.full((3, ROW_BYTES), 7, dtype=torch.uint8)
    found = t.get_many(TABLE, others, out, V)
    if name.endswith("cache"):                          # a cache misses rows it was never given ...
        assert not found.any() and (out == 7).all()     # ... and leaves their rows alone
    elif name == "host-mirror":                         # every row of a table it holds, none of others
        assert found.all()
        np.testing.assert_array_equal(out.numpy(), expect[[1, 2, 4]])
        t.put_many(TABLE, others, out, V)               # nothing to add, nothing changes
        np.testing.assert_array_equal(t.data[TABLE].numpy(), expect)
        with pytest.raises(BadRowIds, match="outside table layer2"):
            t.get_many(TABLE, torch.tensor([10**9]), torch.empty(1, ROW_BYTES, dtype=torch.uint8), V)
        assert not t.get_many("layer1", others, out, V).any()
    else:                                               # a backing store finds every valid row
        assert found.all()
        np.testing.assert_array_equal(out.numpy(), expect[[1, 2, 4]])
        with pytest.raises(TypeError, match="read-only"):
            t.put_many(TABLE, others, out, V)
        with pytest.raises(BadRowIds, match="outside table layer2"):
            t.get_many(TABLE, torch.tensor([10**9]), torch.empty(1, ROW_BYTES, dtype=torch.uint8), V)
        assert t.describe(TABLE).row_bytes == ROW_BYTES and t.describe(TABLE, fresh=True).version == V
    if name.endswith("cache"):                          # a cache holds one version: after a switch the
        t.switch(TABLE, V + 1)                          # old one's rows are gone, and a late offer of
        t.put_many(TABLE, ids, out_of(ids), V)          # them (a step from before it) is not kept
        assert not t.get_many(TABLE, ids, out_of(ids), V + 1).any()
        assert not t.get_many(TABLE, ids, out_of(ids), V).any()


def out_of(ids):
    return torch.empty(len(ids), ROW_BYTES, dtype=torch.uint8)


def test_fetch_composes_tiers_and_fills_the_caches(served_store):
    server, db, _ = served_store
    expect = expected_rows(2)
    device = CacheTier("device", 1 << 20, {TABLE: ROW_BYTES}, {TABLE: V})
    host = CacheTier("host", 256 * 1024, {TABLE: ROW_BYTES}, {TABLE: V}, pin_memory=True)
    store = StoreTier(str(db))
    try:
        ids = torch.from_numpy(np.unique(np.random.default_rng(0).integers(0, 11_000, 500)))
        out = torch.empty(len(ids), ROW_BYTES, dtype=torch.uint8)
        fetch(TABLE, ids, out, [device, host, store], V)
        np.testing.assert_array_equal(out.numpy(), expect[ids.numpy()])
        assert device.stats().misses == len(ids) and host.stats().misses == len(ids)
        again = torch.empty_like(out)
        fetch(TABLE, ids, again, [device, host, store], V)
        np.testing.assert_array_equal(again.numpy(), out.numpy())
        assert device.stats().hits == len(ids)               # the second pass never left the device tier
    finally:
        store.close()


def test_host_mirror_takes_the_earliest_tables_that_fit(served_store):
    server, _, _ = served_store
    source = ServiceTier(MemoryClient(server.target))
    try:
        sizes = {t: source.describe(t).num_rows * source.describe(t).row_bytes for t in ("layer2", "layer1")}
        mirror = HostMirror(sizes["layer2"] + sizes["layer1"] - 1, ["layer2", "layer1"], source,
                            {"layer2": V, "layer1": V}, progress=False)
        assert mirror.holds("layer2") and not mirror.holds("layer1")   # layer1 no longer fits
        assert not HostMirror(sizes["layer2"] - 1, ["layer2"], source, {"layer2": V}, progress=False).data
    finally:
        source.close()


def test_build_tiers_composes_the_stack_once(served_store):
    server, db, _ = served_store
    config = tiny_config(row_dtype="bfloat16", layer_ids=[2])
    mirror_bytes = expected_rows(2).nbytes
    stack = build_tiers(TierConfig(device_cache_mb=1, host_cache_mb=1, host_mirror_mb=mirror_bytes / 2**20,
                                   policy="lfu"), StoreTier(str(db)), config, progress=False)
    try:
        assert stack.tables == {2: TABLE} and stack.versions == {TABLE: V}
        assert [t.name for t in stack.below_device()] == ["host-mirror", "host", "lmdb"]
        assert stack.device_cache.caches[TABLE].policy == "lfu" and stack.host_mirror.holds(TABLE)
        ids = torch.arange(0, 5000, 7)
        out = out_of(ids)
        fetch(TABLE, ids, out, stack.below_device(), V)
        np.testing.assert_array_equal(out.numpy(), expected_rows(2)[ids.numpy()])
        assert stack.host_mirror.rows_served == len(ids)           # the mirror answered before the others
    finally:
        stack.close()
    with pytest.raises(ValueError, match="--policy must be one of"):
        TierConfig(policy="fifo")
