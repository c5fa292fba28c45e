"""DemoModel: a small decoder-only backbone with Engram layers, for the demo and the e2e benchmark.

Blocks of pre-norm causal attention (with a KV cache) and an MLP over the mean of the hc_mult
hyper-connection branches, whose update is added to every branch (a simple stand-in for mHC, as the
reference demo mocks it). Blocks listed in EngramConfig.layer_ids first add their Engram output to
the branches. Weights are random: the model exists to run Engram's data path at realistic shapes,
not to produce meaningful text.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import EngramConfig
from kernels import use_triton

from .engram import Engram


@dataclass
class BackboneConfig:
    num_layers: int = 16      # the demo preset puts Engram at blocks 1 and 15
    hidden_size: int = 256
    hc_mult: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    vocab_size: int = 129_280  # DeepSeek-V3's embedding rows (>= its 128,815 tokenizer ids)
    max_positions: int = 4096

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "hc_mult", "heads", "mlp_ratio", "vocab_size", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"BackboneConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.hidden_size % self.heads:
            raise ValueError(f"BackboneConfig.hidden_size {self.hidden_size} must be divisible by heads {self.heads}")

    @property
    def parameters(self) -> int:
        d = self.hidden_size
        block = 4 * d * d + 2 * self.mlp_ratio * d * d
        return self.num_layers * block + 2 * self.vocab_size * d + self.max_positions * d


def decode_attention_reference(q, k_cache, v_cache, seq_lens):
    """q [B, H, hd] attends to the first seq_lens[b] keys of k_cache, v_cache [B, H, S, hd]: float32
    scores over every cached position, masked past each length (kernels/decode_attention.py is this
    in one Triton kernel that reads only the keys it needs)."""
    hd = q.shape[-1]
    scores = torch.einsum("bhd,bhsd->bhs", q.float(), k_cache.float()) * hd ** -0.5
    visible = torch.arange(k_cache.shape[2], device=q.device)[None, :] < seq_lens.to(q.device)[:, None]
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", scores.softmax(dim=-1), v_cache.float()).to(q.dtype)


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig, engram: Engram | None):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.heads
        self.engram = engram
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc1, self.fc2 = nn.Linear(d, cfg.mlp_ratio * d, bias=False), nn.Linear(cfg.mlp_ratio * d, d, bias=False)

    def forward(self, x, positions, kv, engram_ids=None, conv_state=None, lengths=None, step=None, keys=None):
        """x [B, T, M, D]; positions [B, T]; kv = (k, v) caches [B, H, S, hd], written at positions.
        keys: what the new tokens attend to, known without a device sync: an int (prefill: the cache's
        first `keys` positions, causal by position) or int [B] (decode, T = 1: each row's own length)."""
        if self.engram is not None:
            x = x + self.engram(x, engram_ids, conv_state, lengths, step)
        return self.mix(x, positions, kv, keys)

    def mix(self, x, positions, kv, keys=None):
        """Attention and MLP over the branches' mean, added to every branch. kv None: training (the
        whole sequence, causal, no cache)."""
        h = x.mean(dim=2)
        B, T, D = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if kv is None:  # training: the whole sequence at once, no cache
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self._mlp(x, h, a)
        k_cache, v_cache = kv
        rows = torch.arange(B, device=h.device)[:, None].expand(B, T)
        k_cache[rows, :, positions] = k.transpose(1, 2)
        v_cache[rows, :, positions] = v.transpose(1, 2)
        if isinstance(keys, int):
            visible = torch.arange(keys, device=h.device)[None, None, :] <= positions[:, :, None]  # causal
            a = F.scaled_dot_product_attention(q, k_cache[:, :, :keys], v_cache[:, :, :keys], attn_mask=visible[:, None])
        else:  # decode: one query per row over its own keys, in a fixed order (kernels/decode_attention.py)
            if use_triton(q):
                from kernels.decode_attention import decode_attention as attend
            else:
                attend = decode_attention_reference
            a = attend(q[:, :, 0], k_cache, v_cache, keys)[:, :, None]
        return self._mlp(x, h, a)

    def _mlp(self, x, h, a):
        B, T, D = h.shape
        delta = self.out(a.transpose(1, 2).reshape(B, T, D))
        delta = delta + self.fc2(F.gelu(self.fc1(self.norm2(h + delta))))
        return x + delta.unsqueeze(2)


class DemoModel(nn.Module):
    def __init__(self, cfg: BackboneConfig, engram_config: EngramConfig, backends: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.engram_config = engram_config.replace(hidden_size=cfg.hidden_size, hc_mult=cfg.hc_mult)
        if max(self.engram_config.layer_ids) >= cfg.num_layers:
            raise ValueError(f"Engram layers {self.engram_config.layer_ids} need at least "
                             f"{max(self.engram_config.layer_ids) + 1} blocks (BackboneConfig.num_layers)")
        backends = backends or {}
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.blocks = nn.ModuleList(
            Block(cfg, Engram(self.engram_config, i, backends.get(i)) if i in self.engram_config.layer_ids else None)
            for i in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def new_state(self, batch: int, device=None) -> dict:
        """KV caches and Engram conv states for `batch` sequences."""
        device = device or self.head.weight.device
        dtype = self.head.weight.dtype
        hd = self.cfg.hidden_size // self.cfg.heads
        shape = (batch, self.cfg.heads, self.cfg.max_positions, hd)
        return {"kv": [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                       for _ in self.blocks],
                "conv": {i: b.engram.new_conv_state(batch, device) for i, b in enumerate(self.blocks) if b.engram}}

    def forward(self, input_ids, positions, state: dict, engram_ids: dict, lengths=None, step=None, keys=None):
        """Logits [B, vocab] at each row's last valid position. engram_ids: {layer: [B, T, C]} from the
        hasher or the step (local_step.py, step.py, staged_step.py), which the Engram layers read their
        rows from. keys: see Block.forward (None: derived from positions, with a device sync)."""
        if keys is None:
            keys = positions[:, 0] + 1 if positions.shape[1] == 1 else int(positions.max()) + 1
        x = self.embed_tokens(input_ids, positions)
        x = self.run_blocks(x, 0, len(self.blocks), positions, state, engram_ids, lengths, step, keys)
        return self.logits(x, lengths)

    def forward_train(self, input_ids, step=None, engram_ids=None):
        """Logits [B, T, vocab] at every position of whole sequences [B, T] (training; no caches).
        step: where the Engram layers read their rows (training/table_rows.py); engram_ids: {layer:
        [B, T, C]} hash indices. An Engram layer left out of engram_ids (ablation) adds nothing."""
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)[None].expand(input_ids.shape[0], T)
        x = self.embed_tokens(input_ids, positions)
        engram_ids = engram_ids or {}
        for i, block in enumerate(self.blocks):
            if block.engram is not None and i in engram_ids:
                x = x + block.engram(x, engram_ids[i], step=step)
            x = block.mix(x, positions, None)
        return self.head(self.norm(x.mean(dim=2)))

    def embed_tokens(self, input_ids, positions):
        x = self.embed(input_ids) + self.pos(positions)
        return x.unsqueeze(2).expand(-1, -1, self.cfg.hc_mult, -1).contiguous()

    def run_blocks(self, x, first: int, stop: int, positions, state, engram_ids, lengths, step, keys):
        """Blocks [first, stop): a decode step's CUDA graphs split the forward pass at Engram layers."""
        for i in range(first, stop):
            x = self.blocks[i](x, positions, state["kv"][i], engram_ids.get(i), state["conv"].get(i), lengths,
                               step, keys)
        return x

    def logits(self, x, lengths=None):
        last = (lengths - 1) if lengths is not None else torch.full((x.shape[0],), x.shape[1] - 1, device=x.device)
        h = x.mean(dim=2)[torch.arange(x.shape[0], device=x.device), last.long()]
        return self.head(self.norm(h))
