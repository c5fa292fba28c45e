"""Loading tables: seeded random init, checkpoints, and a load killed half-way."""
import os
import signal
import subprocess
import time

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from core.reader import StoreReader
from core.row_format import RowFormat
from core.store import TableStore
from core.table_init import seeded_rows
from memory_service.checkpoint import CheckpointRows
from model_client import EngramConfig, TableGeometry

from ..served import EXE, Server, tiny_config

TENSOR = "layers.{L}.engram.multi_head_embedding.embedding.weight"


def run(*args, **kw):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, **kw)


def config_file(tmp_path, **changes):
    path = tmp_path / "config.json"
    path.write_text(tiny_config(**changes).to_json())
    return str(path)


def read_all(db, table, version=0):
    store = TableStore(db, readonly=True)
    reader = StoreReader(store)
    try:
        m = store.manifest(table, version)
        return m, reader.lookup(table, version, np.arange(m.num_rows))[1]
    finally:
        reader.close()
        store.close()


@pytest.mark.parametrize("ckpt_dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
def test_safetensors_checkpoint_loads_bit_exact(tmp_path, ckpt_dtype):
    cfg = tiny_config(row_dtype="bfloat16")
    geo = TableGeometry.from_config(cfg)
    weights = {TENSOR.replace("{L}", str(layer)): np.random.default_rng(layer).standard_normal(
        (geo.rows(layer), cfg.head_dim)).astype(ckpt_dtype) for layer in cfg.layer_ids}
    save_file(weights, str(tmp_path / "model.safetensors"))
    out = run("load", "--db", str(tmp_path / "db"), "--config", config_file(tmp_path, row_dtype="bfloat16"),
              "--from", str(tmp_path / "model.safetensors"), "--layers", "1", "3", "--no-progress",
              "--chunk-rows", "2048")
    assert out.returncode == 0, out.stderr
    assert "layer1 v1" in out.stdout and "layer3 v1" in out.stdout and "published" in out.stdout
    for layer in (1, 3):
        m, rows = read_all(tmp_path / "db", f"layer{layer}")
        expect = torch.from_numpy(weights[TENSOR.replace("{L}", str(layer))].astype(np.float32)).to(torch.bfloat16)
        assert m.source.endswith(TENSOR.replace("{L}", str(layer)))
        np.testing.assert_array_equal(rows, expect.view(torch.uint8).numpy().reshape(len(rows), -1))


def test_torch_checkpoint_and_reference_state_dict_names(tmp_path):
    cfg = tiny_config()
    geo = TableGeometry.from_config(cfg)
    state = {TENSOR.replace("{L}", "2"): torch.randn(geo.rows(2), cfg.head_dim)}
    torch.save(state, tmp_path / "model.pt")
    source = CheckpointRows(tmp_path / "model.pt", TENSOR.replace("{L}", "2"), geo.rows(2), cfg.head_dim)
    np.testing.assert_array_equal(source.rows(5, 9), state[TENSOR.replace("{L}", "2")][5:9].numpy())


def test_checkpoint_errors_are_clear(tmp_path):
    save_file({"layers.1.engram.multi_head_embedding.embedding.weight": np.zeros((7, 40), np.float32)},
              str(tmp_path / "m.safetensors"))
    cfgf = config_file(tmp_path)
    out = run("load", "--db", str(tmp_path / "db"), "--config", cfgf, "--from", str(tmp_path / "m.safetensors"),
              "--layers", "1")
    assert out.returncode == 2 and "has shape [7, 40]; this layer's table needs [" in out.stderr
    out = run("load", "--db", str(tmp_path / "db"), "--config", cfgf, "--from", str(tmp_path / "m.safetensors"),
              "--layers", "2")
    assert out.returncode == 2 and "has no tensor 'layers.2.engram" in out.stderr
    out = run("load", "--db", str(tmp_path / "db"), "--config", cfgf)
    assert out.returncode == 2 and "exactly one source" in out.stderr
    out = run("load", "--db", str(tmp_path / "db"), "--config", cfgf, "--random-init", "--layers", "9")
    assert out.returncode == 2 and "[9] are not Engram layers" in out.stderr
    out = run("load", "--db", str(tmp_path / "db"), "--config", cfgf, "--random-init", "--dtype", "int8")
    assert out.returncode == 2 and "--dtype must be one of" in out.stderr


def test_random_init_matches_the_seeded_local_table(tmp_path):
    out = run("load", "--db", str(tmp_path / "db"), "--config", config_file(tmp_path, row_dtype="fp8-e4m3"),
              "--random-init", "--seed", "7", "--layers", "4", "--no-progress")
    assert out.returncode == 0, out.stderr
    m, rows = read_all(tmp_path / "db", "layer4")
    fmt = RowFormat("fp8-e4m3", 40)
    np.testing.assert_array_equal(rows, fmt.encode(seeded_rows(7, 4, 0, m.num_rows, 40)))
    assert m.source == "random-init seed=7" and len(m.checksum) == 32


def test_kill_9_mid_load_keeps_the_old_version_serving(tmp_path):
    """A load killed half-way: v1 keeps serving, the partial v2 shows in `info` and `drop` removes it."""
    db = tmp_path / "db"
    big = tmp_path / "big.json"
    # layer 1 of ~800k rows x 160 B = 128 MB, committed every 4 MiB: long enough to kill mid-way
    big.write_text(EngramConfig(engram_vocab_size=[100_000, 100_000], n_embed_per_ngram=160, n_head_per_ngram=4,
                                layer_ids=[1], hidden_size=32).to_json())
    load = ["load", "--db", str(db), "--config", str(big), "--random-init", "--no-progress",
            "--chunk-rows", "8192", "--commit-mb", "4"]
    assert run(*load).returncode == 0
    server = Server(db, workers=1)
    server.wait_serving()
    from model_client import MemoryClient
    client = MemoryClient(server.target, channels=1)
    ids = np.arange(0, 800_000, 997)
    before = client.lookup("layer1", ids)
    loader = subprocess.Popen([EXE, *load, "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = TableStore(db, readonly=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            versions = store.manifests("layer1")
            if len(versions) == 2 and versions[1].rows_written > 0:
                break
            time.sleep(0.01)
        os.kill(loader.pid, signal.SIGKILL)
        loader.wait()
        partial = store.manifests("layer1")[1]
        assert partial.status == "loading" and 0 < partial.rows_written < partial.num_rows
    finally:
        store.close()
    np.testing.assert_array_equal(client.lookup("layer1", ids), before)  # still v1, still serving
    info = run("info", "--db", str(db))
    assert info.returncode == 0 and "loading" in info.stdout and "1 partial load(s)" in info.stdout
    assert run("drop", "--db", str(db), "--table", "layer1", "--version", "2").returncode == 0
    assert "partial" not in run("info", "--db", str(db)).stdout
    # a fresh load after the crash publishes v3 and the running server switches to it
    assert run(*load, "--seed", "1").returncode == 0
    deadline = time.monotonic() + 10
    while client.describe("layer1", refresh=True).version != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = client.lookup("layer1", ids)
    expect = RowFormat("float32", 40).encode(seeded_rows(1, 1, 0, 800_000, 40)[ids])
    np.testing.assert_array_equal(after, expect)
    verify = run("info", "--db", str(db), "--verify")
    assert verify.returncode == 0 and "every chunk matches" in verify.stdout
    client.close()
    assert server.stop() == 0


def test_load_if_absent_is_idempotent(tmp_path):
    cfg = config_file(tmp_path, row_dtype="bfloat16")
    args = ["load", "--db", str(tmp_path / "db"), "--config", cfg, "--random-init", "--layers", "1",
            "--no-progress", "--if-absent"]
    assert run(*args).returncode == 0
    again = run(*args)
    assert again.returncode == 0 and "already published for this config: skipped" in again.stdout
    other = config_file(tmp_path, row_dtype="bfloat16", seed=3)
    clash = run("load", "--db", str(tmp_path / "db"), "--config", other, "--random-init", "--layers", "1",
                "--no-progress", "--if-absent")
    assert clash.returncode == 2 and "built with seed=0" in clash.stderr
