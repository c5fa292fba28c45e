"""ExchangeClock: how much of a training step the ranks spend exchanging, by kind.

`with clock("rows"):` around a collective adds its wall time to this step's "rows" total. On a GPU
NCCL collectives are asynchronous, so the clock waits for the device before and after (what ran
before is not charged to the exchange, the collective itself is). The ranks exchange rows in
three all-to-alls a layer (counts, ids, rows) and the gradients in one more, and the dense
gradients in one all-reduce; the first all-to-all already waits for the device (its counts go to
the host), so the waits the clock adds cost little. With one process there is nothing to exchange
and the clock is off.

Kinds: "rows" (ids out and rows back, forward), "row_grads" (row gradients to their owners),
"dense_grads" (the all-reduce of the backbone's gradients).
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

    def _wait(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
        """This step's seconds by kind; the clock starts the next step at zero."""
        out, self.step = self.step, dict.fromkeys(KINDS, 0.0)
        return out
