"""`engram-memory gate`: where a trained model's Engram gate opens (the paper's Fig. 7).

For each text: the gate alpha of every Engram layer at every token (the mean over hyper-connection
branches), drawn as a heatmap (PNG) and as colored tokens (HTML a browser shows). Then a figure over
held-out text: the mean gate on tokens that complete a fixed phrase against all other tokens. A
fixed phrase is found from the training split's statistics alone, in any language: the token pair
(t-1, t) occurs at least --min-count times and its pointwise mutual information log2(c(ab) N /
(c(a) c(b))) is at least --pmi bits; token t then completes it (the gate at t sees the n-grams that
end at t). The counts, means and thresholds go to gate_phrases.json beside the PNG.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .token_windows import DEFAULT_CORPORA

DEFAULT_TEXTS = ["The United States Supreme Court ruled on Tuesday that the New York Times may publish the papers.",
                 "中华人民共和国国务院总理在北京人民大会堂会见了联合国秘书长。"]


@dataclass
class GateConfig:
    checkpoint: str = field(default="", metadata={"required": True, "help": "the index or merged .safetensors "
                                                                            "that `engram-memory train` wrote"})
    text: list[str] = field(default_factory=lambda: list(DEFAULT_TEXTS), metadata={
        "help": "texts to draw the gate of (default: an English and a Chinese sentence)"})
    out: str = field(default="gate-out", metadata={"help": "directory for the PNGs, the HTML and the JSON"})
    corpora: list[str] = field(default_factory=lambda: list(DEFAULT_CORPORA), metadata={
        "help": "the corpora the model trained on (phrase statistics from the training split, gates on validation)"})
    windows: int = field(default=64, metadata={"help": "validation windows (512 tokens, or the model's max "
                                                         "positions), spread over the split, to average the gate over"})
    min_count: int = field(default=20, metadata={"help": "a fixed phrase's token pair occurs at least this often"})
    pmi: float = field(default=4.0, metadata={"help": "... with at least this many bits of mutual information"})
    doc_lines: int = field(default=100, metadata={"help": "as the training run's --doc-lines (its validation split)"})
    font: str = field(default="", metadata={"help": "a .ttf/.ttc font file for the PNG labels, e.g. one with CJK "
                                                    "glyphs where none is installed (default: installed fonts)"})

    def __post_init__(self):
        if self.font and not Path(self.font).is_file():
            raise ValueError(f"--font {self.font}: no such font file")
        if not self.text:
            raise ValueError("--text: give at least one text")
        if self.windows < 1 or self.min_count < 1:
            raise ValueError("--windows and --min-count must be >= 1")


def gates(model, hasher, ids: np.ndarray) -> np.ndarray:
    """[layers, B, T] mean gate over branches of token windows [B, T] (local tables)."""
    engrams = [b.engram for b in model.blocks if b.engram is not None]
    for e in engrams:
        e.gate_sink = []
    try:
        with torch.no_grad():
            hashed = {L: torch.from_numpy(v) for L, v in hasher.hash(ids).items()}
            model.forward_train(torch.from_numpy(ids), None, hashed)
        return np.stack([e.gate_sink[0].float().mean(dim=-1).numpy() for e in engrams])
    finally:
        for e in engrams:
            e.gate_sink = None


def _fonts(extra: str = "") -> list[str]:
    """extra (a font file) first, then a CJK-capable font where one is installed (else Chinese labels
    draw as boxes: the HTML page shows them either way)."""
    import warnings

    from matplotlib import font_manager
    if extra:
        font_manager.fontManager.addfont(extra)
        return [font_manager.FontProperties(fname=extra).get_name(), "DejaVu Sans"]
    names = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [n for n in ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "AR PL UMing CN") if n in names]
    if not cjk:
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    return cjk + ["DejaVu Sans"]


def phrase_completions(train: np.ndarray, ids: np.ndarray, min_count: int, pmi: float) -> np.ndarray:
    """bool like ids [B, T]: token t completes a frequent, strongly associated pair (t-1, t)."""
    pairs = train[:-1].astype(np.int64) * (1 << 20) + train[1:]
    keys, counts = np.unique(pairs, return_counts=True)
    vocab, unigram = np.unique(train, return_counts=True)
    a, b = keys >> 20, keys & ((1 << 20) - 1)
    ca, cb = unigram[np.searchsorted(vocab, a)], unigram[np.searchsorted(vocab, b)]
    score = np.log2(counts * len(train) / (ca * cb.astype(np.float64)))
    strong = keys[(counts >= min_count) & (score >= pmi)]
    out = np.zeros(ids.shape, dtype=bool)
    query = ids[:, :-1].astype(np.int64) * (1 << 20) + ids[:, 1:]
    out[:, 1:] = np.isin(query, strong)
    return out


def run(cfg: GateConfig) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import kernels
    from model_client.hasher import NgramHasher
    from model_client.trained_model import load_trained

    from .token_windows import TokenWindows, corpus_files
    kernels.set_backend("reference")  # the gate is read on the PyTorch path
    model = load_trained(cfg.checkpoint)
    if all(b.engram is None for b in model.blocks):
        raise ValueError(f"--checkpoint {cfg.checkpoint} was trained without Engram layers: it has no gate")
    hasher = NgramHasher(model.engram_config)
    layers = [i for i, b in enumerate(model.blocks) if b.engram is not None]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = hasher.tokenizer
    page = ["<html><meta charset='utf-8'><body style='font-family:sans-serif'><h2>Engram gate per token</h2>"]
    for n, text in enumerate(cfg.text):
        ids = np.array([tok.encode(text)], dtype=np.int64)
        g = gates(model, hasher, ids)[:, 0]                                  # [layers, T]
        labels = [tok.tokenizer.decode([int(i)]) for i in ids[0]]
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(labels)), 1 + 0.5 * len(layers)))
        im = ax.imshow(g, aspect="auto", cmap="Reds", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=8, fontfamily=_fonts(cfg.font))
        ax.set_yticks(range(len(layers)), [f"layer {L}" for L in layers])
        fig.colorbar(im, ax=ax, label="gate")
        fig.tight_layout()
        fig.savefig(out / f"gate_{n}.png", dpi=120)
        plt.close(fig)
        for row, L in enumerate(layers):
            spans = "".join(f"<span title='{v:.3f}' style='background:rgba(220,30,30,{v:.3f})'>{html.escape(s)}</span>"
                            for s, v in zip(labels, g[row]))
            page.append(f"<p><b>layer {L}</b>: {spans}</p>")
        print(f"wrote {out / f'gate_{n}.png'}")
    (out / "gate.html").write_text("\n".join(page) + "</body></html>", encoding="utf-8")
    data = TokenWindows(corpus_files(cfg.corpora), tok, min(512, model.cfg.max_positions), cfg.doc_lines, 0)
    val = data.val_batches(1, min(cfg.windows, len(data.windows["val"])))[0]  # spread over every corpus
    inside = phrase_completions(data.windows["train"].reshape(-1), val, cfg.min_count, cfg.pmi)
    g = np.concatenate([gates(model, hasher, val[i:i + 8]) for i in range(0, len(val), 8)], axis=1)
    stats = {"min_count": cfg.min_count, "pmi_bits": cfg.pmi, "tokens": int(val.size),
             "phrase_tokens": int(inside.sum()), "layers": {}}
    for row, L in enumerate(layers):
        stats["layers"][str(L)] = {"phrase": float(g[row][inside].mean()), "other": float(g[row][~inside].mean())}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(layers))
    ax.bar(x - 0.2, [stats["layers"][str(L)]["phrase"] for L in layers], 0.4, label="completes a fixed phrase")
    ax.bar(x + 0.2, [stats["layers"][str(L)]["other"] for L in layers], 0.4, label="other tokens")
    ax.set_xticks(x, [f"layer {L}" for L in layers])
    ax.set_ylabel("mean gate")
    ax.set_ylim(0, 1.2)  # room above the bars (a gate is at most 1) for the legend
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gate_phrases.png", dpi=120)
    (out / "gate_phrases.json").write_text(json.dumps(stats, indent=1))
    print(f"wrote {out / 'gate.html'}, {out / 'gate_phrases.png'}: " + ", ".join(
        f"layer {L} {v['phrase']:.3f} vs {v['other']:.3f}" for L, v in stats["layers"].items()))
    return 0
