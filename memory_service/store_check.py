"""Checks of a table store before it is served: a damaged store is refused at open, naming the file
and what is wrong, instead of crashing a server process on the first lookup into the damage.

At open (`serve`, cheap): LMDB's meta pages are valid, data.mdb holds every page they say is in use
(store.open_env), every manifest parses (TableStore), and every ready or published version's chunks
are where its chunk map says, the right size, inside the file (table_view.TableView). The rows themselves
are checked on every read (row_check.py); `info --verify` reads them all.
"""
from __future__ import annotations

import logging

from core.manifest import PUBLISHED, READY
from core.reader import Snapshot
from core.store import StoreError, TableStore

logger = logging.getLogger("engram_memory")


def check_store(path) -> list[str]:
    """Raise StoreError (DATA_LOSS) if the store at `path` is damaged; the versions it cannot serve
    for another reason (stored without per-row checksums), as warnings."""
    store = TableStore(path, readonly=True)
    warnings = []
    try:
        snap = Snapshot(store)
        try:
            for m in store.manifests():
                if m.status not in (READY, PUBLISHED):
                    continue
                try:
                    snap.view(m.table, m.version)
                except StoreError as e:
                    if e.reason != "not_ready":
                        raise StoreError(e.reason, f"{store.path / 'data.mdb'}: {e}") from None
                    warnings.append(str(e))
        finally:
            snap.close()
    finally:
        store.close()
    return warnings
