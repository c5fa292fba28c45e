"""`engram-memory worker` against a real service that starts late, then goes away and comes back."""
import json
import subprocess
import time

from memory_service.process import command

from ..served import Server, fill_store, free_port, tiny_config


def test_worker_waits_for_the_service_serves_and_recovers(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(tiny_config(row_dtype="bfloat16").to_json())
    db = tmp_path / "db"
    fill_store(db, dtypes={layer: "bfloat16" for layer in (1, 2, 3, 4)})
    port, metrics_port = free_port(), free_port()
    worker = subprocess.Popen([*command(), "worker", "--target", f"127.0.0.1:{port}", "--config", str(config),
                               "--metrics-port", str(metrics_port),
                               "--num-layers", "5", "--hidden-size", "32", "--heads", "4", "--sequences", "2",
                               "--min-len", "20", "--max-len", "40", "--decode-steps", "2", "--rounds", "0",
                               "--retry-s", "0.3", "--device-cache-mb", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []

    def read_until(predicate, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = worker.stdout.readline()
            if not line:
                break
            entry = json.loads(line)
            lines.append(entry)
            if predicate(entry):
                return entry
        raise AssertionError(f"never saw the expected line; got {lines[-5:]}; stderr: {worker.stderr.read()[-2000:]}")

    try:
        read_until(lambda e: e["level"] == "ERROR" and "unavailable" in e["msg"])   # no service yet
        server = Server(db, "--port", str(port), workers=1)
        first = read_until(lambda e: e.get("msg") == "round")
        assert first["rows_from_service"] > 0 and 0 <= first["device_hit_rate"] <= 1
        assert {"ts", "level", "pid", "logger", "msg", "worker"} <= set(first)    # the service's log shape
        ready = next(e for e in lines if e.get("msg") == "worker ready")
        assert ready["row_dtype"] == "bfloat16"                   # taken from the published tables
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        for name in ('engram_worker_cache_lookups_total{layer="1",tier="device"}',
                     'engram_worker_rows_fetched_total{layer="2",tier="service"}',
                     'engram_worker_exposed_wait_seconds_bucket{layer="1",le=', "engram_worker_rounds_total",
                     'engram_worker_tokens_total{phase="decode"}'):
            assert name in text, name
        server.kill()                                            # kill -9: the service goes away
        read_until(lambda e: e["level"] == "ERROR")
        server = Server(db, "--port", str(port), workers=1)                          # and comes back
        resumed = read_until(lambda e: e.get("msg") == "round" and e["round"] > first["round"])
        assert resumed["rows_served_total"] > first["rows_served_total"]
        assert server.stop() == 0
    finally:
        worker.kill()
        worker.wait()


def test_worker_runs_a_trained_checkpoint_and_refuses_other_rows(tmp_path, ds_tokenizer):
    """worker --checkpoint: the served rows are sampled against the checkpoint's, then the trained
    model generates through the service exactly the text it generates holding its tables; a service
    with the same geometry but other (random) rows is refused, naming the table."""
    from core import checkpoint_format
    from memory_service.loader import LoadConfig, run_load
    from model_client.hasher import NgramHasher
    from model_client.trained_model import load_trained
    from model_client.workload import Runner, WorkloadConfig, generated_text, make_prompts

    from ..served import Server, free_port
    from ..trained import trained_checkpoint
    index = trained_checkpoint(tmp_path, ds_tokenizer)
    config = tmp_path / "trained.json"
    config.write_text(checkpoint_format.metadata(index)["engram_config"])
    for db, source in (("db", {"checkpoint": str(index)}), ("random", {"random_init": True, "config": str(config)})):
        assert run_load(LoadConfig(db=str(tmp_path / db), progress=False, **source)) == 0
    flags = ["--checkpoint", str(index), "--sequences", "2", "--min-len", "10", "--max-len", "20",
             "--decode-steps", "5", "--rounds", "1", "--workload-seed", "7", "--device-cache-mb", "1", "--device", "cpu"]
    port = free_port()
    server = Server(tmp_path / "db", "--port", str(port), workers=1)
    try:
        done = subprocess.run([*command(), "worker", "--target", f"127.0.0.1:{port}", *flags],
                              capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    rounds = [e for e in map(json.loads, done.stdout.splitlines()) if e.get("msg") == "round"]
    generated = rounds[0]["generated"]
    model = load_trained(index)  # its own tables, in this process
    hasher = NgramHasher(model.engram_config, ds_tokenizer)
    wl = WorkloadConfig(sequences=2, min_len=10, max_len=20, decode_steps=5, workload_seed=7)
    prompts = make_prompts(ds_tokenizer, wl)
    local = Runner(model, hasher, pad_id=model.engram_config.pad_id).run(prompts, 5)
    assert generated == generated_text(ds_tokenizer, prompts, local.tokens, count=1)[0]
    assert generated["continuation"]

    port = free_port()
    server = Server(tmp_path / "random", "--port", str(port), workers=1)
    try:
        refused = subprocess.run([*command(), "worker", "--target", f"127.0.0.1:{port}", *flags],
                                 capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert refused.returncode == 2 and "table layer1 does not hold the rows of --checkpoint" in refused.stderr
