"""`engram-memory train`: the demo backbone with Engram layers, trained on the shared corpora.

One step, on every rank of the group (one process per table shard):
  batch     rank r's slice of the step's global batch of token windows (token_windows.py)
  rows      the batch hashed; each Engram layer's distinct rows gathered from their owners (TableRows)
  forward   logits at every position (DemoModel.forward_train), next-token cross-entropy (bf16
            autocast on a GPU; the PyTorch references of the kernels, which autograd can run through)
  backward  dense gradients averaged over the ranks (one all-reduce); row gradients pushed to owners
  update    AdamW on the dense parameters (clipped at norm 1); lazy Adam on the rows read
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from core.row_format import RowFormat
from model_client.demo_model import DemoModel
from model_client.hasher import NgramHasher

from . import checkpoint_writer
from .exchange_clock import KINDS, ExchangeClock
from .sharded_table import ShardedTable
from .table_rows import TableRows, TrainingBackend
from .token_windows import TokenWindows, corpus_files
from .train_config import TrainConfig


def run(cfg: TrainConfig) -> int:
    if _device(cfg).type == "cuda" and "RANK" not in os.environ:
        _check_gpus(cfg.world_size)
    if cfg.world_size > 1 and "RANK" not in os.environ:
        import torch.multiprocessing as mp
        with socket.socket() as s:  # a free port on loopback for the group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_spawned, args=(cfg, port), nprocs=cfg.world_size, join=True)
        return 0
    if "RANK" in os.environ:  # torchrun
        _init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), cfg)
    try:
        train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _spawned(rank: int, cfg: TrainConfig, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _init(rank, cfg.world_size, cfg)
    try:
        train(cfg)
    finally:
        dist.destroy_process_group()


def _init(rank: int, world: int, cfg: TrainConfig) -> None:
    if _device(cfg).type != "cuda":  # the cores split between the processes (torchrun sets OMP_NUM_THREADS)
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        return
    # a process per GPU of this host: torchrun's LOCAL_RANK, else (spawned here) the rank
    local = int(os.environ.get("LOCAL_RANK", rank))
    _check_gpus(local + 1)
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)


def _check_gpus(processes: int) -> None:
    """NCCL takes one GPU per process (two ranks on one GPU: 'Duplicate GPU detected')."""
    if processes > torch.cuda.device_count():
        raise ValueError(f"--world-size: {processes} processes on this host need {processes} GPUs, it has "
                         f"{torch.cuda.device_count()} (NCCL takes one GPU per process; --device cpu trains over gloo)")


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    return torch.device(cfg.device)


class Trainer:
    def __init__(self, cfg: TrainConfig, windows: TokenWindows | None = None):
        import kernels
        kernels.set_backend("reference")  # the kernels have no backward; their references do
        self.cfg, self.device = cfg, _device(cfg)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
            if not cfg.autocast:  # float32 means float32: TF32 matmuls keep 10 mantissa bits
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        config = cfg.engram_config()
        self.hasher = NgramHasher(config)
        geometry = self.hasher.geometry
        row_format = RowFormat(config.row_dtype, config.head_dim)
        backends = {L: TrainingBackend(geometry.rows(L), row_format) for L in config.layer_ids}
        torch.manual_seed(cfg.seed)  # the same dense weights on every rank and for every world size
        self.model = DemoModel(cfg.backbone, config, backends).to(self.device)
        if not cfg.engram:
            for block in self.model.blocks:
                block.engram = None
        lr_rows = cfg.lr * cfg.table_lr_mult
        self.clock = ExchangeClock(self.device, enabled=self.world > 1)
        self.tables = {L: ShardedTable(L, geometry.rows(L), config.head_dim, self.device, lr_rows, cfg.seed,
                                       clock=self.clock) for L in config.layer_ids} if cfg.engram else {}
        matrices = [p for p in self.model.parameters() if p.dim() >= 2]
        others = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                                            {"params": others, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
        self.windows = windows or TokenWindows(corpus_files(cfg.corpora), self.hasher.tokenizer, cfg.seq_len,
                                               cfg.doc_lines, cfg.seed)
        self.step, self.history = 0, {"train": [], "val": []}
        self.timings: list[dict] = []  # per step: step_s and the exchange's seconds by kind

    # ---- one step -----------------------------------------------------------------------------------
    def loss(self, batch: np.ndarray, engram: bool = True, zeros: bool = False):
        """Mean next-token loss of [b, T] windows, and their TableRows (None without Engram)."""
        ids = torch.from_numpy(batch).to(self.device)
        rows = TableRows(self.tables, self.hasher, batch, zeros) if self.tables and engram else None
        with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda" and self.cfg.autocast):
            logits = self.model.forward_train(ids, rows, rows.hash_ids if rows else None)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return loss, rows

    def train_step(self) -> float:
        cfg, started = self.cfg, time.perf_counter()
        scale = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * scale
        for table in self.tables.values():
            table.lr = cfg.lr * cfg.table_lr_mult * scale
        loss, rows = self.loss(self.windows.train_batch(self.step, cfg.batch, self.rank, self.world))
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self._average_dense_grads()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if rows is not None:
            rows.push(self.tables)
        self.step += 1
        mean = self._mean(loss.detach())  # a float: waits for the device, so the step is all in step_s
        self.timings.append({"step_s": time.perf_counter() - started, **self.clock.take()})
        return mean

    def timing_summary(self) -> dict:
        """Medians over the steps after the first (which pays for allocation and kernel choice): step
        time, the exchange's seconds by kind, and the exchange's share of the step."""
        steps = self.timings[1:] or self.timings
        if not steps:
            return {}
        med = lambda xs: float(np.median(xs))  # noqa: E731
        exchange = [sum(t[k] for k in KINDS) for t in steps]
        return {"step_s_median": med([t["step_s"] for t in steps]),
                "exchange_s_median": {k: med([t[k] for t in steps]) for k in KINDS},
                "exchange_bytes_median": {k: med([t[f"{k}_bytes"] for t in steps]) for k in KINDS},
                "exchange_share": med([e / t["step_s"] for e, t in zip(exchange, steps)]),
                "timed_steps": len(steps)}

    def schedule(self, step: int) -> float:
        """Linear warmup, then cosine from 1 to 0.1 of the peak."""
        if step < self.cfg.warmup:
            return (step + 1) / self.cfg.warmup
        progress = (step - self.cfg.warmup) / max(1, self.cfg.steps - self.cfg.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    @torch.no_grad()
    def evaluate(self, engram: bool = True, zeros: bool = False) -> float:
        losses = [self.loss(b, engram, zeros)[0] for b in self.windows.val_batches(self.cfg.eval_batches, self.cfg.batch,
                                                                                   self.rank, self.world)]
        return self._mean(torch.stack(losses).mean())

    def _average_dense_grads(self) -> None:
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.clock.count("dense_grads", 2 * (self.world - 1) * flat.numel() * flat.element_size() // self.world)
        with self.clock("dense_grads"):
            dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(self.model.parameters(), grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def _mean(self, value: torch.Tensor) -> float:
        value = value.float().reshape(1)
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    # ---- state ----------------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "history": json.dumps(self.history)}
        return checkpoint_writer.save(Path(self.cfg.out), self.model, self.tables, self.step, self.cfg.backbone,
                                      self.cfg.engram, state)

    def resume(self) -> None:
        state = checkpoint_writer.load_train_state(Path(self.cfg.out), self.rank)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for layer, table in self.tables.items():
            table.load_state(state["tables"][layer])
        self.step, self.history = int(state["step"]), json.loads(state["history"])


def train(cfg: TrainConfig) -> Trainer:
    from tqdm import tqdm
    trainer = Trainer(cfg)
    if cfg.resume:
        trainer.resume()
    lead = trainer.rank == 0
    tokens_per_step = cfg.batch * cfg.seq_len
    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=not (lead and cfg.progress), unit="step")
    started, first = time.perf_counter(), trainer.step
    while trainer.step < cfg.steps:
        loss = trainer.train_step()
        rate = (trainer.step - first) * tokens_per_step / (time.perf_counter() - started)
        trainer.history["train"].append([trainer.step, loss])
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
        bar.update(1)
        out_of_time = bool(cfg.max_seconds) and time.perf_counter() - started > cfg.max_seconds
        if cfg.max_seconds and trainer.world > 1:  # every rank stops at the same step
            out_of_time = trainer._mean(torch.tensor(float(out_of_time), device=trainer.device)) > 0
        if out_of_time:
            trainer.cfg = cfg = dataclasses.replace(cfg, steps=trainer.step)
        last = trainer.step == cfg.steps
        if (cfg.eval_every and trainer.step % cfg.eval_every == 0) or last:
            trainer.history["val"].append([trainer.step, trainer.evaluate()])
        if (cfg.save_every and trainer.step % cfg.save_every == 0) or last:
            trainer.save()
    bar.close()
    wall = time.perf_counter() - started
    ablations = {}
    if cfg.engram:  # the trained model with its Engram layers' output removed, and with rows served as zeros
        ablations = {"val_loss_engram_removed": trainer.evaluate(engram=False),
                     "val_loss_rows_zero": trainer.evaluate(zeros=True)}
    if lead:
        summary = {"steps": trainer.step, "tokens": trainer.step * tokens_per_step, "wall_s": wall,
                   "tokens_per_s": (trainer.step - first) * tokens_per_step / wall if wall else 0.0,
                   "world_size": trainer.world, "device": str(trainer.device), "engram": cfg.engram,
                   "batch": cfg.batch, "seq_len": cfg.seq_len, **trainer.timing_summary(),
                   "train_tokens": trainer.windows.tokens["train"], "val_tokens": trainer.windows.tokens["val"],
                   "val_loss": trainer.history["val"][-1][1], **ablations, "history": trainer.history}
        (Path(cfg.out) / "metrics.json").write_text(json.dumps(summary, indent=1))
        print(f"trained {trainer.step} steps ({summary['tokens']:,} tokens) in {wall:.0f} s, "
              f"{summary['tokens_per_s']:,.0f} tokens/s; val loss {summary['val_loss']:.4f}"
              + "".join(f", {k[9:].replace('_', ' ')} {v:.4f}" for k, v in ablations.items()) + "; "
              f"checkpoint {Path(cfg.out) / 'model.safetensors.index.json'}")
    return trainer
