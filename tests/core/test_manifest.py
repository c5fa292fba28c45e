import time

import pytest

from core.manifest import TableManifest
from model_client import EngramConfig


def manifest(config=None, layer=1):
    return TableManifest.for_layer(config or EngramConfig(), layer, "ab" * 32, 98_627, 65_536,
                                   "random-init seed=0", time.time())


def test_geometry_comes_from_the_config():
    m = manifest()
    assert (m.table, m.num_rows, m.row_bytes, m.head_dim, m.num_chunks) == ("layer1", 10_344_164, 256, 64, 158)
    assert TableManifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("field,value", [
    ("seed", 1), ("pad_id", 3), ("engram_vocab_size", [646_401, 646_400]), ("max_ngram_size", 4),
    ("n_head_per_ngram", 4), ("n_embed_per_ngram", 256), ("layer_ids", [1, 14]), ("row_dtype", "bfloat16"),
])
def test_a_mismatch_names_the_field(field, value):
    cfg = EngramConfig()
    changes = {field: value}
    if field == "max_ngram_size":
        changes["engram_vocab_size"] = [646_400] * 3
    with pytest.raises(ValueError, match=rf"built with {field}="):
        manifest().check_compatible(cfg.replace(**changes), "ab" * 32, 98_627)


def test_module_only_fields_and_tokenizer_path_may_differ():
    m = manifest()
    m.check_compatible(EngramConfig(hidden_size=2048, hc_mult=1, kernel_size=3, tokenizer="/x/tokenizer.json"),
                       "ab" * 32, 98_627)
    with pytest.raises(ValueError, match="tokenizer sha256"):
        m.check_compatible(EngramConfig(), "cd" * 32)
    with pytest.raises(ValueError, match="expects 98627 compressed ids"):
        m.check_compatible(EngramConfig(), "ab" * 32, 98_000)


def test_bad_manifests_are_refused():
    with pytest.raises(ValueError, match="not valid JSON"):
        TableManifest.from_json("{")
    with pytest.raises(ValueError, match="unknown field"):
        TableManifest.from_json('{"bogus": 1}')
    with pytest.raises(ValueError, match="incomplete"):
        TableManifest.from_json('{"table": "layer1"}')
    data = manifest()
    with pytest.raises(ValueError, match="power of two"):
        TableManifest(**{**data.__dict__, "chunk_rows": 1000})
    with pytest.raises(ValueError, match="num_rows is 5"):
        TableManifest(**{**data.__dict__, "num_rows": 5})
    with pytest.raises(ValueError, match="layer_id 7 is not in config.layer_ids"):
        TableManifest(**{**data.__dict__, "layer_id": 7})
