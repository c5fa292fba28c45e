"""The `engram-memory` console script, run as a user runs it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

EXE = shutil.which("engram-memory") or os.path.join(os.path.dirname(sys.executable), "engram-memory")


def run(*args, env=None):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


HELP_COMMANDS = [[], ["demo"], ["worker"], ["load"], ["serve"], ["info"], ["health"], ["drop"], ["bench"],
                 ["bench", "hashing"], ["bench", "service"], ["bench", "e2e"], ["bench", "hit-rate"],
                 ["bench", "scale"], ["bench", "kernels"], ["bench", "failover"]]


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=lambda a: "-".join(a) or "top")
def test_help_explains_every_flag(args):
    out = run(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: engram-memory" in out.stdout
    if args == ["demo"]:
        for flag in ("--config", "--corpus", "--max-chars", "--seq-len"):
            assert flag in out.stdout


def test_demo_end_to_end_on_real_text():
    out = run("demo", "--max-chars", "30000", "--no-e2e")
    assert out.returncode == 0, out.stderr
    assert "128,815 raw ids -> 98,627 compressed ids" in out.stdout
    assert "10,344,164 / 10,348,242" in out.stdout           # demo geometry
    assert "384,006,168 / 384,016,682" in out.stdout         # DeepSeek-V4.1
    assert "188.8 GiB" in out.stdout
    corpus_lines = [line for line in out.stdout.splitlines() if line.endswith("%")]
    assert corpus_lines, out.stdout
    for line in corpus_lines:
        tokens = int(line.split()[1].replace(",", ""))
        assert tokens > 1000


def test_demo_on_a_given_file_and_bad_input(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 50)
    out = run("demo", "--corpus", str(text), "--config", "paper-27b", "--seq-len", "64", "--no-e2e")
    assert out.returncode == 0, out.stderr
    assert "t.txt" in out.stdout and "Engram at layers [2, 15]" in out.stdout
    bad = run("demo", "--config", "paper-99b")
    assert bad.returncode == 2 and "neither a preset" in bad.stderr
    missing = run("demo", "--corpus", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "--corpus: no such file" in missing.stderr   # the flag, not the class


def test_bench_hashing_writes_json(tmp_path):
    out_path = tmp_path / "h.json"
    out = run("bench", "hashing", "--repeats", "1", "--out", str(out_path))
    assert out.returncode == 0, out.stderr
    rows = json.loads(out_path.read_text())
    hashes = [r for r in rows if r["bench"] == "hash"]
    assert {(r["lib"], r["batch_tokens"]) for r in hashes} == {
        ("numpy", 4096), ("torch", 4096), ("numpy", 65536), ("torch", 65536)}
    assert all(r["tokens_per_s"] > 0 for r in hashes)
    assert {r["mode"] for r in rows if r["bench"] == "compression_build"} == {"cold", "cached"}


def test_service_commands_need_no_torch(tmp_path):
    """The memory service's image has no torch: load, serve, info and drop must not import it."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"engram_vocab_size": [3000, 3000], "n_embed_per_ngram": 64,
                                  "n_head_per_ngram": 2, "layer_ids": [1, 2]}))
    db = str(tmp_path / "db")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from cli.main import main\n"
            "for cmd in (['serve', '--help'], ['load', '--help'], ['info', '--help'], ['drop', '--help']):\n"
            "    try:\n"
            "        main(cmd)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, cmd\n"
            f"assert main(['load', '--db', {db!r}, '--config', {str(config)!r}, '--random-init', '--no-progress',"
            " '--dtype', 'fp8-e4m3']) == 0\n"
            f"assert main(['info', '--db', {db!r}, '--verify']) == 0\n"
            f"assert main(['drop', '--db', {db!r}, '--table', 'layer2', '--version', '1', '--force']) == 0\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "every chunk matches its crc32" in done.stdout and "dropped layer2 v1" in done.stdout


def test_serve_reads_a_settings_file_and_flags_override_it(tmp_path):
    import json
    import signal
    import subprocess as sp

    from ..served import EXE, fill_store, free_port
    db = tmp_path / "db"
    fill_store(db, dtypes={1: "float32"})
    port = free_port()
    (tmp_path / "serve.json").write_text(json.dumps({"db": str(db), "port": 1, "metrics-port": 0, "workers": 1,
                                                     "--refresh-ms": 30}))
    proc = sp.Popen([EXE, "serve", "--config", str(tmp_path / "serve.json"), "--port", str(port)],
                    stderr=sp.PIPE, text=True)
    try:
        for line in proc.stderr:
            if '"msg": "serving"' in line:
                entry = json.loads(line)
                assert entry["port"] == port and entry["workers"] == 1 and entry["db"] == str(db)
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    (tmp_path / "bad.json").write_text(json.dumps({"db": str(db), "prot": 5}))
    bad = sp.run([EXE, "serve", "--config", str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown setting 'prot'" in bad.stderr
