import json

import pytest

from model_client import PRESETS, EngramConfig


def test_demo_preset_is_the_reference_demo():
    c = EngramConfig.preset("demo")
    assert c.engram_vocab_size == [129280 * 5, 129280 * 5]
    assert (c.max_ngram_size, c.n_embed_per_ngram, c.n_head_per_ngram) == (3, 512, 8)
    assert (c.layer_ids, c.pad_id, c.seed, c.kernel_size) == ([1, 15], 2, 0, 4)
    assert (c.hidden_size, c.hc_mult, c.tokenizer) == (1024, 4, "deepseek-v3")
    assert (c.head_dim, c.num_columns, c.engram_hidden_size, c.row_bytes) == (64, 16, 1024, 256)


def test_paper_and_v41_presets():
    p27, p40 = EngramConfig.preset("paper-27b"), EngramConfig.preset("paper-40b")
    assert p27.engram_vocab_size == [2_262_400] * 2 and p27.n_embed_per_ngram == 640
    assert p40.engram_vocab_size == [7_239_680] * 2 and p40.head_dim == 80
    v4 = EngramConfig.preset("deepseek-v4.1")
    assert (v4.max_ngram_size, v4.engram_vocab_size, v4.n_head_per_ngram) == (4, [16_000_000] * 3, 8)
    assert (v4.head_dim, v4.layer_ids, v4.row_dtype) == (256, [1, 14], "fp8-e4m3")
    assert v4.row_bytes == 256 + 256 // 32  # one scale byte per 32 values


@pytest.mark.parametrize("dtype,row_bytes", [("float32", 256), ("bfloat16", 128), ("float16", 128),
                                             ("fp8-e4m3", 66)])
def test_row_bytes_per_dtype(dtype, row_bytes):
    assert EngramConfig(row_dtype=dtype).row_bytes == row_bytes


def test_fp8_partial_block_counts_a_scale():
    assert EngramConfig(n_embed_per_ngram=640, row_dtype="fp8-e4m3").row_bytes == 80 + 3


@pytest.mark.parametrize("changes,field", [
    (dict(engram_vocab_size=[1000]), "engram_vocab_size"),
    (dict(engram_vocab_size=[1000, 1]), "engram_vocab_size"),
    (dict(max_ngram_size=1, engram_vocab_size=[]), "max_ngram_size"),
    (dict(n_embed_per_ngram=500), "n_embed_per_ngram"),
    (dict(n_head_per_ngram=0), "n_head_per_ngram"),
    (dict(layer_ids=[]), "layer_ids"),
    (dict(layer_ids=[1, 1]), "layer_ids"),
    (dict(layer_ids=[-1]), "layer_ids"),
    (dict(pad_id=-1), "pad_id"),
    (dict(seed=-3), "seed"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(hidden_size=2.5), "hidden_size"),
    (dict(hc_mult=True), "hc_mult"),
    (dict(row_dtype="int8"), "row_dtype"),
    (dict(tokenizer=""), "tokenizer"),
])
def test_inconsistent_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"EngramConfig\.{field}\b"):
        EngramConfig(**changes)


def test_json_round_trip_and_load(tmp_path):
    for name in PRESETS:
        c = EngramConfig.preset(name)
        path = tmp_path / f"{name}.json"
        path.write_text(c.to_json())
        assert EngramConfig.load(str(path)) == c
        assert EngramConfig.load(name) == c


def test_load_rejects_unknown_fields_and_names(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"max_ngram": 3}))
    with pytest.raises(ValueError, match="unknown field.*max_ngram"):
        EngramConfig.load(str(path))
    with pytest.raises(ValueError, match="neither a preset"):
        EngramConfig.load("paper-99b")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        EngramConfig.load(str(path))
