"""bench.train_plot gathers real `train` runs' metrics into one JSON and draws their loss curves."""
from __future__ import annotations

import json

import pytest

from bench import train_plot
from tests.trained import tiny_cfg
from training.trainer import train


def test_two_real_runs_are_gathered_and_drawn(tmp_path):
    (tmp_path / "e").mkdir(), (tmp_path / "b").mkdir()
    engram = train(tiny_cfg(tmp_path / "e", eval_every=1))
    base = train(tiny_cfg(tmp_path / "b", eval_every=1, engram=False))
    assert train_plot.main([f"engram={engram.cfg.out}", f"base={base.cfg.out}", "--out", str(tmp_path / "r/cmp")]) == 0
    record = json.loads((tmp_path / "r/cmp.json").read_text())
    assert set(record) == {"engram", "base"}
    assert "val_loss_rows_zero" in record["engram"] and "val_loss_rows_zero" not in record["base"]
    assert len(record["engram"]["history"]["val"]) == record["engram"]["steps"]
    png = (tmp_path / "r/cmp_loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_run_without_metrics_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_plot.main([f"engram={tmp_path}", "--out", str(tmp_path / "x")])
    assert f"engram={tmp_path}" in capsys.readouterr().err
