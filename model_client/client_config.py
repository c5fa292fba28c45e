"""ClientConfig: how a process reaches the memory service (one service or a cluster of shards and
replicas, with tokens and TLS), a config part that the worker's flags are derived from; `connect()`
builds the lookup client."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClientConfig:
    target: str = field(default="127.0.0.1:50051", metadata={"help": "memory service address host:port"})
    cluster: str = field(default="", metadata={
        "help": "cluster config JSON of a sharded, replicated service (core/cluster.py); replaces --target"})
    token_file: str = field(default="", metadata={
        "help": "file holding the service's read token (its --token-file), sent with every call"})
    tls_ca: str = field(default="", metadata={
        "help": "PEM CA that signed the service's certificate: TLS on (the service's --tls-cert)"})
    tls_cert: str = field(default="", metadata={
        "help": "this client's PEM certificate, for a service that asks for one (its --tls-client-ca)"})
    tls_key: str = field(default="", metadata={"help": "the private key of --tls-cert"})
    timeout_s: float = field(default=10.0, metadata={
        "help": "deadline of one lookup, retries included; a round waits at most this long for a service "
                "that is down before it is abandoned"})
    retries: int = field(default=3, metadata={"help": "tries after the first, with backoff, within the deadline"})

    def __post_init__(self):
        if ":" not in self.target:
            raise ValueError(f"--target must be host:port (got {self.target!r})")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ValueError(f"--timeout-s must be > 0 and --retries >= 0 (got {self.timeout_s}, {self.retries})")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_cert and not self.tls_ca:
            raise ValueError("--tls-cert needs --tls-ca (a client certificate is sent only over TLS)")

    @property
    def address(self) -> str:
        """What the logs call the service: the cluster file or the target."""
        return self.cluster or self.target

    def connect(self):
        """A MemoryClient for --target, or a ClusterClient for --cluster."""
        from core.credentials import read_secret

        from .cluster_client import ClusterClient
        from .memory_client import MemoryClient
        security = dict(token=read_secret(self.token_file, "--token-file") or None, tls_ca=self.tls_ca or None,
                        tls_cert=self.tls_cert or None, tls_key=self.tls_key or None)
        if self.cluster:
            return ClusterClient(self.cluster, timeout_s=self.timeout_s, **security)
        return MemoryClient(self.target, timeout_s=self.timeout_s, retries=self.retries, **security)
