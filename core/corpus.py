"""Real text for demos, tests and benchmarks: the shared corpora, or the packaged fallback."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGED_SAMPLE = Path(__file__).parent / "data" / "carroll-alice.txt"
ENGLISH = "en/brown.txt"
CHINESE = "zh/msra_news.txt"


def corpora_dir() -> Path | None:
    """$ENGRAM_CORPORA, else the first `shared/corpora` found beside or above the working directory
    or this checkout (the workspace keeps it at ../shared/corpora); None when there is none."""
    if os.environ.get("ENGRAM_CORPORA"):
        path = Path(os.environ["ENGRAM_CORPORA"])
        return path if path.is_dir() else None
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "corpora"
            if candidate.is_dir():
                return candidate
    return None


def corpus_file(relative: str) -> Path | None:
    """A file inside the corpora directory (e.g. "en/brown.txt"), or None when it is absent."""
    base = corpora_dir()
    path = base / relative if base else None
    return path if path and path.is_file() else None


def read_lines(path: Path, max_chars: int | None = None) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stopping once max_chars characters are read."""
    lines, total = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            lines.append(line)
            total += len(line)
            if max_chars is not None and total >= max_chars:
                break
    return lines
