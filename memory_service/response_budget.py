"""ResponseBudget: bytes of lookup answers this server process holds that clients have not taken.

An answer stays in the server's memory until gRPC has sent it, and a client that asks and never reads
keeps it there: 40 unary Lookups of 1M ids (8 MiB each) from a process that then stopped pinned
11.9 GiB in one server process (issue 13's review), each 8-byte id asking for 160-256 bytes of rows.
So every answer that carries rows first reserves its bytes here, per connection and per process,
and gives them back when gRPC has sent it (a unary call's termination callback; a stream's next
turn). An answer that does not fit is refused with RESOURCE_EXHAUSTED, which clients retry with
backoff: a reader that takes its answers always gets room again.
"""
from __future__ import annotations

import threading
from collections import defaultdict

from core.errors import StoreError


class ResponseBudget:
    def __init__(self, total_bytes: int, per_peer_bytes: int):
        self.total_bytes, self.per_peer_bytes = total_bytes, per_peer_bytes
        self._held = 0
        self._by_peer: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def reserve(self, peer: str, nbytes: int):
        """Room for an answer of nbytes to `peer`; returns the function that gives it back (once)."""
        with self._lock:
            if self._by_peer[peer] + nbytes > self.per_peer_bytes and self._by_peer[peer]:
                raise StoreError("too_large", f"{self._by_peer[peer] >> 20} MiB of answers to this "
                                 f"connection are not read yet (at most {self.per_peer_bytes >> 20} MiB): read them, "
                                 "then retry")
            if self._held + nbytes > self.total_bytes and self._held:
                raise StoreError("too_large", f"{self._held >> 20} MiB of answers are waiting for their "
                                 f"clients in this server process (at most {self.total_bytes >> 20} MiB): retry")
            self._held += nbytes
            self._by_peer[peer] += nbytes
        released = []

        def release(*_):
            with self._lock:
                if released:
                    return
                released.append(True)
                self._held -= nbytes
                self._by_peer[peer] -= nbytes
                if not self._by_peer[peer]:
                    del self._by_peer[peer]
        return release

    @property
    def held_bytes(self) -> int:
        return self._held
