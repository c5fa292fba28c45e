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
