"""StreamGovernor: open lookup streams may not hold the threads every other call needs.

The server answers calls from a pool of `threads` threads, and an open StreamLookup holds one for
as long as it stays open, idle or not; a client that reads its answers slowly holds one while each
answer waits to be sent. Left alone, 256 idle streams made every new call fail (issue 13). So:

- at most `max_streams` streams per server process (default threads - threads // 4: 48 of 64 threads,
  leaving 16 for unary calls, health checks and registrations), and `max_per_peer` per connection;
- a new stream that finds no room takes the place of the stream that has waited longest for its
  next request (at least `evict_idle_s`) or stalled longest sending an answer (`evict_stall_s`);
  that stream is cancelled and its client reopens one when it needs it (MemoryClient does);
- with nothing to evict, the new stream is refused with RESOURCE_EXHAUSTED (MemoryClient then sends
  the same request as a unary call, retrying with backoff inside its deadline);
- streams idle past `idle_timeout_s` or stalled past `stall_timeout_s` are cancelled anyway.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from core.store import StoreError

WAITING, WORKING, SENDING = "waiting", "working", "sending"


@dataclass(eq=False)
class OpenStream:
    peer: str
    context: object
    state: str = WORKING
    since: float = field(default_factory=time.monotonic)

    def waiting(self) -> None:
        self.state, self.since = WAITING, time.monotonic()

    def working(self) -> None:
        self.state, self.since = WORKING, time.monotonic()

    def sending(self) -> None:
        self.state, self.since = SENDING, time.monotonic()


class StreamGovernor:
    def __init__(self, max_streams: int, max_per_peer: int = 4, evict_idle_s: float = 1.0,
                 evict_stall_s: float = 5.0, idle_timeout_s: float = 60.0, stall_timeout_s: float = 30.0,
                 on_event=lambda reason: None):
        """on_event(reason): called with "evicted", "refused" or "timed_out" (metrics)."""
        self.on_event = on_event
        self.max_streams, self.max_per_peer = max_streams, max_per_peer
        self.evict_idle_s, self.evict_stall_s = evict_idle_s, evict_stall_s
        self.idle_timeout_s, self.stall_timeout_s = idle_timeout_s, stall_timeout_s
        self._open: list[OpenStream] = []
        self._lock = threading.Lock()
        self.evicted = self.refused = self.timed_out = 0
        self._closed = threading.Event()
        threading.Thread(target=self._janitor, daemon=True, name="stream-janitor").start()

    def _overdue(self, stream: OpenStream, now: float, idle_s: float, stall_s: float) -> float:
        """How long past its limit the stream is (< 0: not evictable)."""
        if stream.state == WAITING:
            return now - stream.since - idle_s
        if stream.state == SENDING:
            return now - stream.since - stall_s
        return -1.0

    def admit(self, peer: str, context) -> OpenStream:
        now = time.monotonic()
        with self._lock:
            mine = [s for s in self._open if s.peer == peer]
            full = mine if len(mine) >= self.max_per_peer else self._open if len(self._open) >= self.max_streams else None
            if full is not None:
                overdue = [(self._overdue(s, now, self.evict_idle_s, self.evict_stall_s), i) for i, s in enumerate(full)]
                late, index = max(overdue, default=(-1.0, -1))
                if late < 0:
                    self.refused += 1
                    self.on_event("refused")
                    raise StoreError("too_large", f"no room for another lookup stream in this server "
                                     f"process ({len(self._open)} open, {len(mine)} on this connection, all "
                                     "busy): retry, or send unary Lookups")
                self._evict(full[index])
                self.evicted += 1
                self.on_event("evicted")
            stream = OpenStream(peer, context)
            self._open.append(stream)
            return stream

    def _evict(self, stream: OpenStream) -> None:
        self._open.remove(stream)
        stream.context.cancel()  # frees the thread: its handler ends, its client sees CANCELLED

    def release(self, stream: OpenStream) -> None:
        with self._lock:
            if stream in self._open:
                self._open.remove(stream)

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def _janitor(self) -> None:
        while not self._closed.wait(1.0):
            now = time.monotonic()
            with self._lock:
                for stream in [s for s in self._open
                               if self._overdue(s, now, self.idle_timeout_s, self.stall_timeout_s) >= 0]:
                    self._evict(stream)
                    self.timed_out += 1
                    self.on_event("timed_out")

    def close(self) -> None:
        self._closed.set()
