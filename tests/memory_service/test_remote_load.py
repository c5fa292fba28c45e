"""`engram-memory load --target`: tables loaded into a running service through AdminService, with the
admin token over TCP (docker-compose's loader) or over the local admin socket; the rows served are
bit-exact; without the admin token nothing is written."""
import subprocess

import numpy as np

from core.row_format import RowFormat
from core.table_init import seeded_rows
from model_client import MemoryClient

from ..served import EXE, Server

CONFIG = ('{"engram_vocab_size": [30000, 30000], "n_embed_per_ngram": 80, "n_head_per_ngram": 2, '
          '"layer_ids": [1, 2], "hidden_size": 32, "hc_mult": 1, "row_dtype": "bfloat16"}')


def load(*args):
    return subprocess.run([EXE, "load", "--random-init", "--seed", "3", "--no-progress", "--commit-mb", "1",
                           "--chunk-rows", "1024", *args], capture_output=True, text=True, timeout=300)


def test_load_into_a_running_service(tmp_path):
    (tmp_path / "config.json").write_text(CONFIG)
    (tmp_path / "admin").write_text("admin-secret\n")
    (tmp_path / "read").write_text("read-secret\n")
    db = tmp_path / "db"
    server = Server(db, "--create", "--token-file", str(tmp_path / "read"), "--admin-token-file",
                    str(tmp_path / "admin"), workers=2)
    try:
        cfg = ["--config", str(tmp_path / "config.json")]
        out = load("--target", server.target, *cfg)                    # no admin token: nothing written
        assert out.returncode == 2 and "UNAUTHENTICATED" in out.stderr, out.stderr
        out = load("--target", server.target, "--token-file", str(tmp_path / "read"), *cfg)
        assert out.returncode == 2 and "PERMISSION_DENIED" in out.stderr, out.stderr
        out = load("--target", server.target, "--token-file", str(tmp_path / "admin"), "--wait-s", "10", *cfg)
        assert out.returncode == 0, out.stderr
        assert "layer1 v1" in out.stdout and "layer2 v1" in out.stdout
        out = load("--target", server.target, "--token-file", str(tmp_path / "admin"), "--if-absent", *cfg)
        assert out.returncode == 0 and out.stdout.count("already published") == 2, out.stdout
        out = load("--target", f"unix:{db / 'admin.sock'}", "--token-file", str(tmp_path / "admin"), "--layers", "2", *cfg)
        assert out.returncode == 0 and "layer2 v2" in out.stdout, out.stderr
        server.wait_serving()
        with MemoryClient(server.target, token="read-secret") as client:
            for layer, version in ((1, 1), (2, 2)):
                m = client.describe(f"layer{layer}")
                assert m.version == version and m.status == "published"
                expect = RowFormat("bfloat16", m.head_dim).encode(seeded_rows(3, layer, 0, m.num_rows, m.head_dim))
                ids = np.arange(0, m.num_rows, 7)
                assert np.array_equal(client.lookup(f"layer{layer}", ids), expect[ids])
    finally:
        server.stop()
