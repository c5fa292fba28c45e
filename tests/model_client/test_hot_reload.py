"""Hot reload: a newly published table version reaches a running worker at a step boundary, with
no restart; its caches drop the old version's rows; a step that started before the publish finishes
on its version; a version built for another config is refused by name."""
import numpy as np
import pytest
import torch

from model_client import MemoryClient, NgramHasher
from model_client.prefetcher import Prefetcher
from model_client.service_tier import ServiceTier
from model_client.store_tier import StoreTier
from model_client.tier_stack import TierConfig, build_tiers

from ..conftest import real_text_ids
from ..served import Server, expected_rows, fill_store, tiny_config

LAYER = 2
CONFIG = tiny_config(row_dtype="bfloat16")
BF16 = {layer: "bfloat16" for layer in CONFIG.layer_ids}


def publish_in_another_process(db, seed):
    """A loader is its own process (LMDB allows one environment handle per process)."""
    import multiprocessing as mp
    process = mp.get_context("spawn").Process(target=fill_store, args=(db, seed), kwargs={"dtypes": BF16})
    process.start()
    process.join(120)
    assert process.exitcode == 0


def rows_of(step, seed):
    ids = step.row_ids(LAYER)
    table = expected_rows(LAYER, seed=seed)
    return torch.from_numpy(table[ids.reshape(-1).numpy()]).view(*ids.shape, table.shape[1])


@pytest.mark.parametrize("tier", ["service", "lmdb", "service+mirror", "service+mirror-direct"])
def test_a_publish_reaches_the_worker_at_a_step_boundary(tmp_path, ds_tokenizer, tier):
    db = tmp_path / "db"
    fill_store(db, seed=0, dtypes=BF16)
    server = Server(db, workers=1) if tier == "service" else None
    try:
        if server:
            server.wait_serving()
        store = ServiceTier(MemoryClient(server.target)) if server else StoreTier(str(db))
        tiers = TierConfig(device_cache_mb=1, host_mirror_mb=64 * ("mirror" in tier))
        prefetcher = Prefetcher(NgramHasher(CONFIG, ds_tokenizer), build_tiers(tiers, store, CONFIG, progress=False),
                                version_check_s=0.0)  # +mirror: every table in host memory
        if tier.endswith("mirror"):
            prefetcher.direct_rows = 0  # through the device cache; -direct: read straight from the mirror
        ids = torch.from_numpy(real_text_ids(ds_tokenizer, "en")[:64].reshape(2, 32))
        first = prefetcher.start(ids)
        assert torch.equal(first.rows(LAYER), rows_of(first, seed=0))
        prefetcher.version_check_s = 3600.0                              # no checks while the steps queue up
        again = prefetcher.start(ids)                                     # now all from the device cache
        assert prefetcher.tiers.device_cache.stats().hits > 0 or (tier.endswith("direct") and prefetcher.tiers.host_mirror.rows_served)
        in_flight = prefetcher.start(ids)                                 # pinned to v1 before the publish
        publish_in_another_process(db, seed=1)                            # v2: other rows, published
        assert torch.equal(in_flight.rows(LAYER), rows_of(in_flight, seed=0))
        assert torch.equal(again.rows(LAYER), rows_of(again, seed=0))
        prefetcher.version_check_s = 0.0
        switched = prefetcher.start(ids)                                  # the next step boundary
        assert (f"layer{LAYER}", 1, 2) in prefetcher.switches and len(prefetcher.switches) == len(BF16)
        assert torch.equal(switched.rows(LAYER), rows_of(switched, seed=1))   # no stale cached row
        if prefetcher.tiers.host_mirror is not None:                      # the mirror copied v2 whole
            assert prefetcher.tiers.host_mirror.versions == {f"layer{layer}": 2 for layer in BF16}
            np.testing.assert_array_equal(prefetcher.tiers.host_mirror.data[f"layer{LAYER}"].numpy(),
                                          expected_rows(LAYER, seed=1))
        prefetcher.close()
    finally:
        if server:
            server.stop()


def test_a_version_for_another_config_is_refused(tmp_path, ds_tokenizer):
    db = tmp_path / "db"
    fill_store(db, seed=0, dtypes=BF16)
    prefetcher = Prefetcher(NgramHasher(CONFIG, ds_tokenizer),
                            build_tiers(TierConfig(device_cache_mb=1), StoreTier(str(db)), CONFIG),
                            version_check_s=0.0)
    import multiprocessing as mp
    process = mp.get_context("spawn").Process(target=load_for_another_config, args=(db,))
    process.start()
    process.join(120)
    assert process.exitcode == 0
    with pytest.raises(ValueError, match="built with seed=7"):
        prefetcher.refresh_versions()
    assert prefetcher.tiers.versions[f"layer{LAYER}"] == 1                       # still on the old version
    prefetcher.close()


def load_for_another_config(db):
    from core.store import TableStore
    from core.tokenizer import get_compressed_tokenizer
    from memory_service.checkpoint import RandomRows
    from memory_service.loader import load_layer
    tokenizer, other = get_compressed_tokenizer("deepseek-v3"), CONFIG.replace(seed=7)
    store = TableStore(db)
    load_layer(store, other, LAYER, RandomRows(0, LAYER, other.head_dim), tokenizer.sha256,
               tokenizer.num_compressed, progress=False, chunk_rows=1024)
    store.close()
