"""The LMDB store and its gather, without RPC."""
import numpy as np
import pytest

from core.manifest import LOADING, PUBLISHED, READY
from core.reader import StoreReader
from core.row_format import RowFormat
from core.store import StoreError, TableStore, chunk_rows_for
from core.table_init import seeded_rows
from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer

from ..served import DTYPE_LAYERS, expected_rows, fill_store, tiny_config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "db"
    manifests = fill_store(path)
    s = TableStore(path)
    yield s, manifests
    s.close()


def test_chunk_rows_is_a_power_of_two_within_16_mib():
    assert chunk_rows_for(256) == 65_536 and chunk_rows_for(160) == 65_536 and chunk_rows_for(264) == 32_768
    assert chunk_rows_for(16 << 20) == 1


@pytest.mark.parametrize("layer", list(DTYPE_LAYERS))
def test_gather_is_bit_exact_for_every_dtype(store, layer):
    s, manifests = store
    m = manifests[layer]
    assert m.status == PUBLISHED and m.num_chunks > 5 and m.num_rows % m.chunk_rows  # a short last chunk
    expect = expected_rows(layer)
    reader = StoreReader(s)
    rng = np.random.default_rng(layer)
    ids = np.concatenate([rng.integers(0, m.num_rows, 5000), [0, m.num_rows - 1, m.chunk_rows - 1, m.chunk_rows]])
    got_manifest, rows = reader.lookup(m.table, 0, ids)
    assert got_manifest.version == m.version
    assert rows.dtype == np.uint8 and rows.shape == (len(ids), m.row_bytes)
    np.testing.assert_array_equal(rows, expect[ids])
    _, everything = reader.lookup(m.table, m.version, np.arange(m.num_rows))
    np.testing.assert_array_equal(everything, expect)
    sorted_ids = np.unique(rng.integers(0, m.num_rows, 6000))            # a client's deduplicated batch
    with reader.snapshot() as snap:
        view = snap.view(m.table, 0)
        np.testing.assert_array_equal(view.gather(sorted_ids), expect[sorted_ids])
        out = np.empty((len(sorted_ids), m.row_bytes), dtype=np.uint8)
        np.testing.assert_array_equal(view.gather_into(sorted_ids, out), expect[sorted_ids])
        assert view._by_chunk(sorted_ids, out) == (len(sorted_ids) >= 64 * (m.num_chunks - 1))
    assert reader.lookup(m.table, 0, np.array([], dtype=np.int64))[1].shape == (0, m.row_bytes)
    reader.close()


def test_errors_name_table_id_and_range(store):
    s, manifests = store
    reader = StoreReader(s)
    n = manifests[1].num_rows
    with pytest.raises(StoreError, match=rf"row id {n} at position 1 is outside table layer1 v1's rows \[0, {n}\)") as e:
        reader.lookup("layer1", 0, np.array([3, n]))
    assert e.value.reason == "bad_request"
    with pytest.raises(StoreError, match="row id -2 at position 0"):
        reader.lookup("layer1", 0, np.array([-2]))
    with pytest.raises(StoreError, match=r"table 'layer9' has no published version \(tables: layer1, layer2") as e:
        reader.lookup("layer9", 0, np.array([1]))
    assert e.value.reason == "not_found"
    with pytest.raises(StoreError, match=r"table 'layer1' has no version 7 \(versions: \[1\]\)"):
        reader.lookup("layer1", 7, np.array([1]))
    reader.close()


def test_versions_publish_atomically_and_old_snapshots_stay_valid(tmp_path):
    cfg = tiny_config()
    s = TableStore(tmp_path / "db")
    v1 = load_layer(s, cfg, 1, RandomRows(0, 1, cfg.head_dim), "sha", 1, progress=False, chunk_rows=512)
    reader = StoreReader(s, refresh_s=0)
    ids = np.arange(0, v1.num_rows, 7)
    with reader.snapshot() as old:
        before = old.view("layer1", 0).gather(ids)
        v2 = load_layer(s, cfg, 1, RandomRows(1, 1, cfg.head_dim), "sha", 1, progress=False,
                        chunk_rows=512, publish=False)
        assert v2.status == READY and s.current_version("layer1") == 1
        assert reader.lookup("layer1", 0, ids)[0].version == 1       # unpublished: not served by default
        assert reader.lookup("layer1", 2, ids)[0].version == 2       # but readable by number
        assert s.publish("layer1", 2) == 1
        manifest, after = reader.lookup("layer1", 0, ids)
        assert manifest.version == 2 and not np.array_equal(after, before)
        np.testing.assert_array_equal(old.view("layer1", 0).gather(ids), before)  # the old snapshot
    assert s.manifest("layer1", 1).status == READY and s.manifest("layer1", 2).status == PUBLISHED
    reader.close()
    s.close()


def test_partial_versions_are_invisible_until_complete(tmp_path):
    cfg = tiny_config()
    s = TableStore(tmp_path / "db")
    fmt = RowFormat(cfg.row_dtype, cfg.head_dim)
    m = load_layer(s, cfg, 1, RandomRows(0, 1, cfg.head_dim), "sha", 1, progress=False, chunk_rows=1024,
                   publish=False)
    partial = s.create_version(type(m)(**{**m.__dict__, "version": 0}))
    rows = fmt.encode(seeded_rows(5, 1, 0, 2048, cfg.head_dim))
    s.write_chunks(partial, [(0, rows[:1024].tobytes()), (1, rows[1024:].tobytes())])
    assert s.manifest("layer1", partial.version).status == LOADING
    assert s.manifest("layer1", partial.version).rows_written == 2048
    reader = StoreReader(s, refresh_s=0)
    with pytest.raises(StoreError, match=r"v2 is loading \(17% of rows written\)"):
        reader.lookup("layer1", partial.version, np.array([0]))
    with pytest.raises(StoreError, match="incomplete: 10 of 12 chunks missing") as e:
        s.publish("layer1", partial.version)
    assert e.value.reason == "not_ready"
    with pytest.raises(StoreError, match="must hold 1024 rows") as e:
        s.write_chunks(partial, [(2, rows[:5].tobytes())])
    with pytest.raises(StoreError, match=r"chunk 99 is outside"):
        s.write_chunks(partial, [(99, rows[:5].tobytes())])
    with pytest.raises(StoreError, match="checksum .* differs") as e:
        s.publish("layer1", m.version, expected_checksum="0" * 32)
    assert e.value.reason == "not_ready"
    s.drop("layer1", partial.version)
    assert [x.version for x in s.manifests("layer1")] == [1]
    with pytest.raises(StoreError, match="is the published version"):
        s.publish("layer1", 1)
        s.drop("layer1", 1)
    s.drop("layer1", 1, force=True)
    assert s.manifests() == [] and s.current_version("layer1") == 0
    reader.close()
    s.close()


def test_chunks_are_located_without_reading_them_and_bad_entries_fall_back(tmp_path):
    """A reader places chunks from the `pages` map (no get, which would pre-fault whole chunks:
    a full read of tables beyond RAM); a wrong, stale or missing entry falls back to the get and
    the rows stay exact."""
    import struct

    from core.store import chunk_key
    layer = next(iter(DTYPE_LAYERS))
    manifest = fill_store(tmp_path / "db")[layer]
    expect = expected_rows(layer)
    ids = np.random.default_rng(3).integers(0, manifest.num_rows, 3000)
    s = TableStore(tmp_path / "db")
    with StoreReader(s).snapshot() as snap:
        view = snap.view(manifest.table, 0)
        assert view.chunks_read == 0
        assert np.array_equal(view.gather(ids), expect[ids])
    with s.env.begin(write=True, db=s.pages) as txn:
        entry = bytes(txn.get(chunk_key(manifest.table, manifest.version, 0)))
        txn.put(chunk_key(manifest.table, manifest.version, 0), struct.pack(">Q", 1 << 40) + entry[8:])  # beyond the file
        txn.put(chunk_key(manifest.table, manifest.version, 1), entry)        # chunk 0's entry: another owner
        moved = bytearray(bytes(txn.get(chunk_key(manifest.table, manifest.version, 3))))
        moved[:8] = entry[:8]                                                  # chunk 3 "moved": data differs
        txn.put(chunk_key(manifest.table, manifest.version, 3), bytes(moved))
        txn.delete(chunk_key(manifest.table, manifest.version, 2))            # missing
    with StoreReader(s).snapshot() as snap:
        view = snap.view(manifest.table, 0)
        assert view.chunks_read == 4
        assert np.array_equal(view.gather(ids), expect[ids])
    s.close()


def test_writes_must_name_a_version(store):
    """Version 0 means "the published one" only to readers (a fuzzing find: Publish(version=0)
    used to unpublish the table)."""
    s, manifests = store
    m = next(iter(manifests.values()))
    for action in (lambda: s.publish(m.table, 0), lambda: s.drop(m.table, 0), lambda: s.finish(m.table, 0)):
        with pytest.raises(StoreError, match="needs a version >= 1") as err:
            action()
        assert err.value.reason == "bad_request"
    assert s.current_version(m.table) == m.version
