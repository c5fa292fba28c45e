"""A real memory service for tests: `engram-memory serve` as a subprocess on a free loopback port,
over a temporary LMDB store filled by the real loader (the `served_store` fixture is in conftest)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from memory_service.checkpoint import RandomRows
from memory_service.loader import load_layer
from memory_service.store import TableStore
from model_client import EngramConfig, TableGeometry
from model_client.row_format import RowFormat
from model_client.table_init import seeded_rows
from model_client.tokenizer import get_compressed_tokenizer

EXE = shutil.which("engram-memory") or os.path.join(os.path.dirname(sys.executable), "engram-memory")
DTYPE_LAYERS = {1: "float32", 2: "bfloat16", 3: "float16", 4: "fp8-e4m3"}


def tiny_config(**changes) -> EngramConfig:
    """4 Engram layers of ~12,000 rows (2 orders x 2 heads of primes near 3,000), head_dim 40:
    rows of 160 B in float32, 80 B in 16-bit, 42 B in fp8 (two scale bytes: blocks of 32 and 8)."""
    base = dict(engram_vocab_size=[3000, 3000], n_embed_per_ngram=80, n_head_per_ngram=2,
                layer_ids=list(DTYPE_LAYERS), hidden_size=32, hc_mult=1)
    base.update(changes)
    return EngramConfig(**base)


def fill_store(path, seed: int = 0, chunk_rows: int = 1024, publish: bool = True, dtypes=None) -> dict:
    """Layer L of tiny_config() stored as dtypes[L] (default DTYPE_LAYERS: one dtype per layer),
    with the DeepSeek-V3 tokenizer's fingerprint; {layer: manifest}."""
    tokenizer = get_compressed_tokenizer("deepseek-v3")
    store = TableStore(path)
    try:
        out = {}
        for layer, dtype in (dtypes or DTYPE_LAYERS).items():
            cfg = tiny_config(row_dtype=dtype)
            out[layer] = load_layer(store, cfg, layer, RandomRows(seed, layer, cfg.head_dim), tokenizer.sha256,
                                    tokenizer.num_compressed, publish=publish, progress=False, chunk_rows=chunk_rows)
        return out
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db, *extra, workers: int = 2):
        self.metrics_port = free_port()
        self.log = Path(db).parent / f"serve-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([EXE, "serve", "--db", str(db), "--port", "0", "--workers", str(workers),
                                      "--metrics-port", str(self.metrics_port), "--refresh-ms", "20", *extra],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.port = self._wait_port()
        self.target = f"127.0.0.1:{self.port}"

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def _wait_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if entry.get("msg") == "serving":
                    return entry["port"]
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not start: {self.log.read_text()}")

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.health() != health_pb2.HealthCheckResponse.SERVING:
            if time.monotonic() > deadline:
                raise TimeoutError("server never reported SERVING")
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def expected_rows(layer: int, seed: int = 0) -> np.ndarray:
    """All encoded rows of layer L in fill_store(seed=seed), computed without the store."""
    cfg = tiny_config(row_dtype=DTYPE_LAYERS[layer])
    n = TableGeometry.from_config(cfg).rows(layer)
    return RowFormat(cfg.row_dtype, cfg.head_dim).encode(seeded_rows(seed, layer, 0, n, cfg.head_dim))
