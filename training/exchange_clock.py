"""ExchangeClock: how much of a training step the ranks spend exchanging, by kind.

`with clock("rows"):` around a collective adds its wall time to this step's "rows" total. On a GPU
NCCL collectives are asynchronous, so the clock waits for the device before and after (what ran
before is not charged to the exchange, the collective itself is). The ranks exchange rows in
three all-to-alls a layer (counts, ids, rows) and the gradients in one more, and the dense
gradients in one all-reduce; the first all-to-all already waits for the device (its counts go to
the host), so the waits the clock adds cost little. With one process there is nothing to exchange
and the clock is off.

Kinds: "rows" (ids out and rows back, forward), "row_grads" (row gradients to their owners),
"dense_grads" (the all-reduce of the backbone's gradients). The clock also adds up the bytes that
leave this rank for each kind: what it sends the other ranks in an all-to-all (not its share to
itself), and for the all-reduce 2 (W - 1) / W of the buffer, the least any all-reduce sends per rank
(a ring's). The volume a link must carry, whatever its speed.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

KINDS = ("rows", "row_grads", "dense_grads")


class ExchangeClock:
    def __init__(self, device: torch.device, enabled: bool):
        self.device, self.enabled = torch.device(device), enabled
        self.step = dict.fromkeys(KINDS, 0.0)
        self.bytes = dict.fromkeys(KINDS, 0)

    def _wait(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def count(self, kind: str, nbytes: int) -> None:
        self.bytes[kind] += int(nbytes)

    @contextmanager
    def __call__(self, kind: str):
        if not self.enabled:
            yield
            return
        self._wait()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._wait()
            self.step[kind] += time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        """This step's seconds by kind and bytes by kind ("<kind>_bytes"); the next step starts at zero."""
        out = {**self.step, **{f"{k}_bytes": v for k, v in self.bytes.items()}}
        self.step, self.bytes = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0)
        return out
