"""The read-ahead of cold pages (core/page_reader.py): pages and runs computed right, the pages read
are the ones the rows and their checksums lie in, and the rows gathered with it on are bit-exact."""
import os

import numpy as np
import pytest

from core.page_reader import PAGE, PageReader, pages_of, runs_of
from core.reader import StoreReader
from core.store import TableStore

from ..served import expected_rows, fill_store


def test_pages_of_counts_a_row_that_straddles_two_pages_in_both():
    offsets = np.array([16, PAGE - 64, 5 * PAGE + 100, 16])
    assert pages_of(offsets, 128).tolist() == [0, 1, 5]


def test_runs_merge_adjacent_pages_up_to_the_read_size():
    first, count = runs_of(np.array([3, 4, 5, 6, 7, 9, 20, 21]), 2)
    assert list(zip(first.tolist(), count.tolist())) == [(3, 2), (5, 2), (7, 1), (9, 1), (20, 2)]
    assert runs_of(np.array([], dtype=np.int64), 4)[0].size == 0


def test_bad_depth_or_read_size_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * PAGE)
    for depth, size in ((0, PAGE), (4, 1000), (4, 0)):
        with pytest.raises(ValueError, match="depth"):
            PageReader(tmp_path / "f", depth, size)
    with pytest.raises(ValueError, match="mode 'uring'"):
        PageReader(tmp_path / "f", 4, PAGE, "uring")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("pr") / "db"
    manifests = fill_store(path, dtypes={1: "float32", 2: "bfloat16"})
    s = TableStore(path)
    yield s, manifests
    s.close()


@pytest.mark.parametrize("mode", ["threads", "advise"])
@pytest.mark.parametrize("layer", [1, 2])
def test_rows_read_ahead_are_bit_exact_and_every_page_is_read_once(store, layer, mode):
    s, manifests = store
    m = manifests[layer]
    expect = expected_rows(layer)
    reader = StoreReader(s, read_depth=4, read_bytes=2 * PAGE, read_above=0, read_mode=mode)
    fd = os.open(s.path / "data.mdb", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # as cold as the kernel lets an open map be
        rng = np.random.default_rng(layer)
        ids = np.concatenate([rng.integers(0, m.num_rows, 3000), [0, m.num_rows - 1, m.chunk_rows - 1]])
        _, rows = reader.lookup(m.table, 0, ids)
        np.testing.assert_array_equal(rows, expect[ids])
        with reader.snapshot() as snap:
            view = snap.view(m.table, 0)
            assert view.pages is reader.pages
            sorted_ids = np.unique(ids)
            out = np.empty((len(sorted_ids), m.row_bytes), dtype=np.uint8)
            np.testing.assert_array_equal(view.gather_into(sorted_ids, out), expect[sorted_ids])
            # one row: its page(s) and its checksum's page, each read once, at the right file offsets
            before = reader.pages.pages
            view.gather(np.array([5]))
            row_at = view.file_start + int(view._offsets(np.array([5]))[0])
            sum_at = view.file_start + int(view.sum_index[0] + 5) * 4
            want = {row_at // PAGE, (row_at + m.row_bytes - 1) // PAGE, sum_at // PAGE}
            assert reader.pages.pages - before == len(want)
            with open(s.path / "data.mdb", "rb") as f:  # the file offset holds the row's bytes
                f.seek(row_at)
                assert f.read(m.row_bytes) == expect[5].tobytes()
    finally:
        os.close(fd)
        reader.close()


def test_small_tables_are_left_to_the_page_cache(store):
    s, manifests = store
    reader = StoreReader(s, read_mode="advise", read_above=1 << 40)
    with reader.snapshot() as snap:
        assert snap.view(manifests[1].table, 0).pages is None
    reader.close()


def test_opening_a_table_warms_exactly_its_checksums_once(store, monkeypatch):
    """The ranges warmed hold the stored sums of every chunk's rows (the file's bytes say so), each
    table version is warmed once per reader, and the warm-up's descriptor is closed when done."""
    s, manifests = store
    m = manifests[2]
    warmed = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, start, n, advice: (
        warmed.append((start, n)) if advice == os.POSIX_FADV_WILLNEED else None, real(fd, start, n, advice))[1])
    fds = len(os.listdir("/proc/self/fd"))
    reader = StoreReader(s, read_above=0, read_mode="advise")
    try:
        with reader.snapshot() as snap:
            view = snap.view(m.table, 0)
            reader.pages.warming.join(timeout=30)
            first = reader.pages.warming
            assert len(warmed) == m.num_chunks
            data = (s.path / "data.mdb").read_bytes()
            sums = np.concatenate([np.frombuffer(data[a:a + n], dtype="<u4") for a, n in warmed])
            local = np.arange(m.stored_rows)
            chunk = local >> view.shift
            np.testing.assert_array_equal(sums, view.sums[view.sum_index[chunk] + (local & (m.chunk_rows - 1))])
            assert sum(n for _, n in warmed) == 4 * m.stored_rows
        with reader.snapshot(fresh=True) as snap:
            snap.views.clear()
            snap.view(m.table, 0)  # a new view of the same version: no second warm-up
            assert reader.pages.warming is first and len(warmed) == m.num_chunks
    finally:
        reader.close()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_no_warm_up_when_rows_are_not_checked(store):
    s, manifests = store
    reader = StoreReader(s, read_above=0, read_mode="advise", verify_rows=False)
    with reader.snapshot() as snap:
        snap.view(manifests[1].table, 0)
        assert reader.pages.warming is None
    reader.close()
