"""ShardedTable: one Engram layer's table split by rows over the processes of a torch.distributed group.

Rank r of W owns rows [r * per, min((r + 1) * per, rows)), per = ceil(rows / W) (the split `load
--shard r/W` serves), in float32 with its own Adam moments. A training step:

  gather(ids)       the batch's distinct row ids, sorted (so each owner's are contiguous), go to their
                    owners (all-to-all of counts, then of ids); each owner sends back its rows (all-to-
                    all of rows). The caller gets them as a leaf that records its gradient.
  push(grad)        after backward: the rows' gradients go back the same way; each owner sums what
                    every rank sent for a row and takes a lazy Adam step on only those rows.

The table trains with Adam at its own learning rate (the paper: 5x the backbone's) and no weight
decay; lazy Adam, as torch.optim.SparseAdam: only rows read this step move, with the bias
correction of the global step. Gradients are of each rank's mean loss, so the owner divides their
sum by W: the update of the mean loss over the global batch, whatever W is. Rows start as seeded
uniform noise of standard deviation `init_std`, a function of the row index alone, so any W starts
from the same table.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from core.table_init import seeded_rows

from .exchange_clock import ExchangeClock


class ShardedTable:
    def __init__(self, layer: int, num_rows: int, head_dim: int, device, lr: float, seed: int = 0,
                 init_std: float = 0.02, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 clock: ExchangeClock | None = None):
        self.layer, self.num_rows, self.head_dim = layer, num_rows, head_dim
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.per = -(-num_rows // self.world)
        self.start, self.stop = min(self.rank * self.per, num_rows), min((self.rank + 1) * self.per, num_rows)
        self.device = torch.device(device)
        # uniform on [-a, a] has standard deviation a / sqrt(3)
        uniform = seeded_rows(seed, layer, self.start, self.stop, head_dim)
        rows = (uniform - np.float32(0.5)) * np.float32(2 * math.sqrt(3) * init_std)
        self.weight = torch.from_numpy(rows).to(self.device)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.weight), torch.zeros_like(self.weight)
        self.lr, self.betas, self.eps, self.steps = lr, betas, eps, 0
        self._pending = None
        self.clock = clock or ExchangeClock(self.device, enabled=False)

    def gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global row ids [...] -> (rows float32 [U, head_dim], a leaf that records its gradient;
        inverse [...]: ids == unique[inverse])."""
        unique, inverse = torch.unique(ids.reshape(-1).to(self.device), return_inverse=True)
        if self.world == 1:
            local = unique - self.start
            rows = self.weight[local]
            self._pending = (local, None, None)
        else:
            send = torch.bincount(unique // self.per, minlength=self.world)
            recv = torch.empty_like(send)
            with self.clock("rows"):
                dist.all_to_all_single(recv, send)
                send_n, recv_n = send.tolist(), recv.tolist()
                asked = unique.new_empty(sum(recv_n))
                dist.all_to_all_single(asked, unique, recv_n, send_n)   # ids other ranks need from me
            me = self.rank  # bytes that leave this rank: counts and ids out, rows back, gradients out
            self.clock.count("rows", 8 * (self.world - 1 + sum(send_n) - send_n[me])
                             + 4 * self.head_dim * (sum(recv_n) - recv_n[me]))
            self.clock.count("row_grads", 4 * self.head_dim * (sum(send_n) - send_n[me]))
            local = asked - self.start
            if len(local) and (int(local.min()) < 0 or int(local.max()) >= self.stop - self.start):
                raise RuntimeError(f"table {self.layer}: rank {self.rank} was asked for rows outside its shard")
            rows = self.weight.new_empty(len(unique), self.head_dim)
            mine = self.weight[local].contiguous()
            with self.clock("rows"):
                dist.all_to_all_single(rows, mine, send_n, recv_n)
            self._pending = (local, send_n, recv_n)
        return rows.detach().requires_grad_(), inverse.view(ids.shape)

    def push(self, grad: torch.Tensor | None) -> None:
        """The gradient [U, head_dim] of the rows `gather` returned (None: unused, zeros), then the
        owners' Adam step."""
        local, send_n, recv_n = self._pending
        self._pending = None
        if grad is None:
            grad = self.weight.new_zeros(sum(send_n) if send_n else len(local), self.head_dim)
        grad = grad.float().contiguous()
        if self.world > 1:
            theirs = grad.new_empty(sum(recv_n), self.head_dim)
            with self.clock("row_grads"):
                dist.all_to_all_single(theirs, grad, recv_n, send_n)
            grad = theirs
        rows, at = torch.unique(local, return_inverse=True)  # several ranks may send the same row
        summed = grad.new_zeros(len(rows), self.head_dim).index_add_(0, at, grad) / self.world
        self._adam(rows, summed)

    def _adam(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps += 1
        b1, b2 = self.betas
        m = self.exp_avg[rows].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.exp_avg_sq[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.exp_avg[rows], self.exp_avg_sq[rows] = m, v
        step = self.lr / (1 - b1 ** self.steps)
        denom = (v / (1 - b2 ** self.steps)).sqrt_().add_(self.eps)
        self.weight[rows] -= step * m / denom

    def state(self) -> dict:
        return {"weight": self.weight, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps,
                "start": self.start, "stop": self.stop}

    def load_state(self, state: dict) -> None:
        if (state["start"], state["stop"]) != (self.start, self.stop):
            raise ValueError(f"table {self.layer}: the saved shard holds rows [{state['start']}, {state['stop']}), "
                             f"this rank owns [{self.start}, {self.stop}): resume with the same world size")
        for name in ("weight", "exp_avg", "exp_avg_sq"):
            getattr(self, name).copy_(state[name])
        self.steps = int(state["steps"])
