"""ServiceProcess: `engram-memory serve` as a child process, for the demo, benchmarks and tests."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def executable() -> str:
    return shutil.which("engram-memory") or os.path.join(os.path.dirname(sys.executable), "engram-memory")


def command() -> list[str]:
    """The installed console script, or this interpreter running the package where it is not installed."""
    exe = executable()
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "cli"]


class ServiceProcess:
    """Starts a server on a free loopback port (unless --port is given) and learns the port from its log."""

    def __init__(self, db, *flags: str, workers: int = 2, metrics_port: int = 0, log: Path | None = None):
        self.metrics_port = metrics_port
        self.log = Path(log) if log else Path(tempfile.mkstemp(prefix="engram-serve-", suffix=".log")[1])
        args = [*command(), "serve", "--db", str(db), "--workers", str(workers),
                "--metrics-port", str(metrics_port), *flags]
        if "--port" not in flags:
            args += ["--port", "0"]
        # its own process group, so kill() can take the workers down with it, as a container stop does
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
                                     start_new_session=True)
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
                raise RuntimeError(f"engram-memory serve exited with {self.proc.returncode}: {self.log.read_text()}")
            time.sleep(0.05)
        self.proc.kill()
        raise TimeoutError(f"engram-memory serve did not start within {timeout:.0f} s: {self.log.read_text()}")

    def health(self, service: str = "") -> int:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, timeout: float = 30) -> None:
        from grpc_health.v1 import health_pb2
        deadline = time.monotonic() + timeout
        while self.health() != health_pb2.HealthCheckResponse.SERVING:
            if time.monotonic() > deadline:
                raise TimeoutError("the memory service never reported SERVING")
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

    def kill(self) -> None:
        """kill -9 the server and all its worker processes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
