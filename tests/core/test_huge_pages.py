"""Huge pages over the table map: the auto rule and the kernel's record of the advice."""
from pathlib import Path

import numpy as np
import pytest

from core import huge_pages
from core.reader import StoreReader
from core.store import TableStore
from memory_service.server import ServiceConfig

from ..served import fill_store

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_auto_advises_only_stores_that_fit_in_half_the_memory():
    assert huge_pages.wanted("auto", 8 << 30, memory=16 << 30)
    assert not huge_pages.wanted("auto", (8 << 30) + 1, memory=16 << 30)
    assert huge_pages.wanted("on", 1 << 50, memory=1) and not huge_pages.wanted("off", 0, memory=1 << 40)
    assert huge_pages.memory_bytes() > 0
    with pytest.raises(ValueError, match="huge_pages must be one of auto, on, off"):
        huge_pages.wanted("always", 0)
    with pytest.raises(ValueError, match=r"ServiceConfig.huge_pages: must be auto, on or off \(got 'yes'\)"):
        ServiceConfig(db="x", create=True, huge_pages="yes")


def _map_flags(data_file: str) -> list[set[str]]:
    """VmFlags of each mapping of data_file in this process."""
    flags, inside = [], False
    for line in open("/proc/self/smaps"):
        if line.split()[0].count("-") == 1 and ":" not in line.split()[0]:
            inside = line.rstrip().endswith(data_file)
        elif inside and line.startswith("VmFlags:"):
            flags.append(set(line.split()[1:]))
    return flags


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="kernel without THP")
@pytest.mark.parametrize("mode", ["on", "off"])
def test_reader_advises_huge_pages_over_the_map(tmp_path, mode):
    manifests = fill_store(tmp_path / "db")
    store = TableStore(tmp_path / "db", readonly=True)
    reader = StoreReader(store, huge_pages=mode)
    try:
        m = manifests[1]
        rows = reader.lookup(m.table, 0, np.arange(m.num_rows))[1]
        assert rows.shape == (m.num_rows, m.row_bytes)
        flags = _map_flags(str(tmp_path / "db" / "data.mdb"))
        assert flags, "the store's map is not in /proc/self/smaps"
        assert any("hg" in f for f in flags) == (mode == "on")
    finally:
        reader.close()
        store.close()

