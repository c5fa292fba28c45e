import os

import torch

if not torch.cuda.is_available():  # kernels run through Triton's interpreter on CPU (before triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from core.corpus import CHINESE, ENGLISH, PACKAGED_SAMPLE, corpus_file, read_lines
from core.tokenizer import get_compressed_tokenizer
from model_client import EngramConfig, NgramHasher


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests build the compression table into their own cache directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ENGRAM_CACHE_DIR", str(tmp_path_factory.mktemp("engram-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def ds_tokenizer(_isolated_cache):
    return get_compressed_tokenizer("deepseek-v3")


@pytest.fixture(scope="session")
def demo_hasher(ds_tokenizer):
    return NgramHasher(EngramConfig(), ds_tokenizer)


def small_config(**changes) -> EngramConfig:
    """A geometry small enough to hold whole tables in tests (primes near 1,000)."""
    base = dict(engram_vocab_size=[1000, 1200], n_embed_per_ngram=32, n_head_per_ngram=4,
                hidden_size=48, layer_ids=[1, 3])
    base.update(changes)
    return EngramConfig(**base)


def real_text_ids(tokenizer, language: str, max_chars: int = 60_000) -> np.ndarray:
    """Token ids of real text: the shared corpora (English or Chinese), or, for English, the
    packaged public-domain sample when the corpora are not beside this checkout."""
    path = corpus_file(ENGLISH if language == "en" else CHINESE)
    if path is None and language == "en":
        path = PACKAGED_SAMPLE
    if path is None:
        pytest.skip(f"{CHINESE} not found: set ENGRAM_CORPORA to the shared corpora directory")
    lines = read_lines(path, max_chars)
    return np.array([i for row in tokenizer.encode_batch(lines) for i in row], dtype=np.int64)


@pytest.fixture(scope="module")
def served_store(tmp_path_factory):
    """A running server over a store holding tiny_config()'s 4 layers, one per row dtype."""
    from .served import Server, fill_store
    db = tmp_path_factory.mktemp("store") / "db"
    manifests = fill_store(db)
    server = Server(db)
    server.wait_serving()
    yield server, db, manifests
    server.stop()
