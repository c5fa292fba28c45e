"""One contract for every tier: cache (as device and as host tier), co-located LMDB, remote service."""
import numpy as np
import pytest
import torch

from core.store import StoreError
from model_client import MemoryClient
from model_client.host_mirror import HostMirror
from model_client.tiers import CacheTier, ServiceTier, StoreTier, fetch

from ..served import expected_rows

TABLE, ROW_BYTES = "layer2", 80  # bfloat16 x 40


@pytest.fixture(params=["device-cache", "host-cache", "host-mirror", "lmdb", "service"])
def tier(request, served_store):
    server, db, _ = served_store
    rows = torch.from_numpy(expected_rows(2))
    if request.param.endswith("cache"):
        t = CacheTier(request.param, 1 << 20, {TABLE: ROW_BYTES}, pin_memory=request.param == "host-cache")
        t.put_many(TABLE, torch.arange(0, 6000, 3), rows[0:6000:3])  # holds every third row
    elif request.param == "host-mirror":             # the whole table, copied from the service
        source = ServiceTier(MemoryClient(server.target))
        t = HostMirror(1 << 20, [TABLE], source, {TABLE: 0}, progress=False)
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
    found = t.get_many(TABLE, ids, out)
    assert found.dtype == torch.bool and found.all()
    np.testing.assert_array_equal(out.numpy(), expect[ids.numpy()])  # written into the caller's buffer
    others = torch.tensor([1, 2, 4])
    out = torch.full((3, ROW_BYTES), 7, dtype=torch.uint8)
    found = t.get_many(TABLE, others, out)
    if name.endswith("cache"):                          # a cache misses rows it was never given ...
        assert not found.any() and (out == 7).all()     # ... and leaves their rows alone
    elif name == "host-mirror":                         # every row of a table it holds, none of others
        assert found.all()
        np.testing.assert_array_equal(out.numpy(), expect[[1, 2, 4]])
        t.put_many(TABLE, others, out)                  # nothing to add, nothing changes
        np.testing.assert_array_equal(t.data[TABLE].numpy(), expect)
        with pytest.raises(IndexError, match="out of range"):
            t.get_many(TABLE, torch.tensor([10**9]), torch.empty(1, ROW_BYTES, dtype=torch.uint8))
        assert not t.get_many("layer1", others, out).any()
    else:                                               # a backing store finds every valid row
        assert found.all()
        np.testing.assert_array_equal(out.numpy(), expect[[1, 2, 4]])
        with pytest.raises(TypeError, match="read-only"):
            t.put_many(TABLE, others, out)
        with pytest.raises((ValueError, StoreError), match="outside table layer2"):
            t.get_many(TABLE, torch.tensor([10**9]), torch.empty(1, ROW_BYTES, dtype=torch.uint8))


def test_fetch_composes_tiers_and_fills_the_caches(served_store):
    server, db, _ = served_store
    expect = expected_rows(2)
    device = CacheTier("device", 1 << 20, {TABLE: ROW_BYTES})
    host = CacheTier("host", 256 * 1024, {TABLE: ROW_BYTES}, pin_memory=True)
    store = StoreTier(str(db))
    try:
        ids = torch.from_numpy(np.unique(np.random.default_rng(0).integers(0, 11_000, 500)))
        out = torch.empty(len(ids), ROW_BYTES, dtype=torch.uint8)
        fetch(TABLE, ids, out, [device, host, store])
        np.testing.assert_array_equal(out.numpy(), expect[ids.numpy()])
        assert device.stats().misses == len(ids) and host.stats().misses == len(ids)
        again = torch.empty_like(out)
        fetch(TABLE, ids, again, [device, host, store])
        np.testing.assert_array_equal(again.numpy(), out.numpy())
        assert device.stats().hits == len(ids)               # the second pass never left the device tier
    finally:
        store.close()


def test_host_mirror_takes_the_earliest_tables_that_fit(served_store):
    server, _, _ = served_store
    source = ServiceTier(MemoryClient(server.target))
    try:
        sizes = {t: source.manifest(t).num_rows * source.row_bytes(t) for t in ("layer2", "layer1")}
        mirror = HostMirror(sizes["layer2"] + sizes["layer1"] - 1, ["layer2", "layer1"], source,
                            {"layer2": 0, "layer1": 0}, progress=False)
        assert mirror.holds("layer2") and not mirror.holds("layer1")   # layer1 no longer fits
        assert not HostMirror(sizes["layer2"] - 1, ["layer2"], source, {"layer2": 0}, progress=False).data
    finally:
        source.close()
