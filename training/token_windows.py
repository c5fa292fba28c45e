"""TokenWindows: the corpora as fixed-length token windows, split into training and validation by document.

A document is `doc_lines` consecutive lines of one file (the corpora keep one sentence or paragraph
per line, with no document marks); document k of file f is held out for validation when
crc32(f's name, k) % 20 == 0 (5%, stable across runs and machines). Each split's documents are
tokenized with the DeepSeek-V3 tokenizer, concatenated per file and cut into windows of seq_len
tokens. The training windows are visited in a seeded random order, a permutation per epoch; step s
of a run reads windows [s * batch, (s + 1) * batch) of that order, rank r its r-th slice, so a
resumed run and a run with another world size read the same tokens.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from core.corpus import PACKAGED_SAMPLE, corpora_dir, read_lines

HELD_OUT = 20


DEFAULT_CORPORA = ["en/brown.txt", "en/gutenberg", "zh/msra_news.txt"]


def corpus_files(names: list[str]) -> list[Path]:
    """Text files named in the shared corpora or as paths; a directory gives its *.txt files. The
    default names without the shared corpora here: the packaged English sample, saying so."""
    if names == DEFAULT_CORPORA and corpora_dir() is None:
        print(f"the shared corpora are not beside this checkout or in $ENGRAM_CORPORA; using {PACKAGED_SAMPLE.name}")
        return [PACKAGED_SAMPLE]
    files = []
    for name in names:
        base = corpora_dir()
        path = Path(name) if Path(name).exists() or base is None else base / name
        if not path.exists():
            raise ValueError(f"--corpora: {name} is neither a path nor in the shared corpora ({base or 'not found'})")
        files += sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"--corpora {' '.join(names)}: no .txt files")
    return files


def split_documents(files: list[Path], doc_lines: int) -> dict[str, list[str]]:
    """{"train": documents, "val": documents}: each file cut into documents of doc_lines lines,
    every 20th (by crc32 of the file's name and the document's number) held out."""
    split = {"train": [], "val": []}
    for path in files:
        lines = read_lines(path)
        for k in range(0, len(lines), doc_lines):
            held = zlib.crc32(f"{path.name}:{k // doc_lines}".encode()) % HELD_OUT == 0
            split["val" if held else "train"].append("\n".join(lines[k:k + doc_lines]))
    return split


class TokenWindows:
    def __init__(self, files: list[Path], tokenizer, seq_len: int, doc_lines: int, seed: int):
        self.seq_len, self.seed = seq_len, seed
        self._epoch: tuple[int, np.ndarray | None] = (-1, None)
        self.windows, self.tokens = {}, {}
        for name, docs in split_documents(files, doc_lines).items():
            ids = np.fromiter((i for row in tokenizer.encode_batch(docs) for i in row), dtype=np.int64)
            n = len(ids) // seq_len
            if n == 0:
                raise ValueError(f"the {name} split has {len(ids)} tokens, fewer than one window of {seq_len}")
            self.windows[name] = ids[:n * seq_len].reshape(n, seq_len)
            self.tokens[name] = int(len(ids))

    def train_batch(self, step: int, batch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """int64 [batch / world, seq_len]: rank's slice of step's global batch."""
        windows = self.windows["train"]
        n = len(windows)
        at = step * batch + np.arange(batch)
        epoch, pos = at // n, at % n
        picks = np.empty(batch, dtype=np.int64)
        for e in np.unique(epoch):
            picks[epoch == e] = self._order(int(e))[pos[epoch == e]]
        share = batch // world
        return windows[picks[rank * share:(rank + 1) * share]]

    def _order(self, epoch: int) -> np.ndarray:
        """The training windows' order in an epoch (kept for the epoch in progress)."""
        if self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.windows["train"])))
        return self._epoch[1]

    def val_batches(self, batches: int, batch: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
        """batches x batch validation windows spread evenly over the whole split (all of it if smaller),
        rank's slices. Evenly, not the first ones: the split is in file order, so its first windows are
        all English and a loss over them alone says nothing about the Chinese."""
        windows = self.windows["val"]
        count = max(1, min(batches, len(windows) // batch))
        picks = np.round(np.linspace(0, len(windows) - 1, count * batch)).astype(np.int64) % len(windows)
        share = batch // world
        return [windows[picks[b * batch + rank * share:b * batch + (rank + 1) * share]] for b in range(count)]
