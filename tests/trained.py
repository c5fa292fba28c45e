"""A tiny model trained for real by `Trainer` (a 3-block, 32-wide backbone; two Engram layers of
~2,000 rows), for the tests of training, checkpoints and serving a trained model."""
from __future__ import annotations

import json

from core.corpus import PACKAGED_SAMPLE
from training.token_windows import TokenWindows
from training.train_config import TrainConfig
from training.trainer import Trainer

STEPS = 3
TINY = {"engram_vocab_size": [500, 500], "layer_ids": [1, 2], "n_embed_per_ngram": 32, "n_head_per_ngram": 2}


def tiny_cfg(tmp_path, world=1, **changes) -> TrainConfig:
    config = tmp_path / "engram.json"
    config.write_text(json.dumps(TINY))
    base = dict(out=str(tmp_path / "out"), config=str(config), seq_len=32, batch=4, steps=STEPS, warmup=1,
                eval_every=0, eval_batches=1, world_size=world, device="cpu", corpora=[str(PACKAGED_SAMPLE)],
                doc_lines=20, progress=False)
    cfg = TrainConfig(**{**base, **changes})
    cfg.backbone.num_layers, cfg.backbone.hidden_size, cfg.backbone.heads, cfg.backbone.max_positions = 3, 32, 2, 32
    return cfg


def windows(cfg, tokenizer) -> TokenWindows:
    return TokenWindows([PACKAGED_SAMPLE], tokenizer, cfg.seq_len, cfg.doc_lines, cfg.seed)


def trained_checkpoint(tmp_path, tokenizer, steps: int = STEPS):
    """Train the tiny model `steps` steps on the packaged sample; the checkpoint's index."""
    cfg = tiny_cfg(tmp_path, steps=steps)
    trainer = Trainer(cfg, windows(cfg, tokenizer))
    for _ in range(steps):
        trainer.train_step()
    return trainer.save()
