"""The Engram module: hashed N-gram memory fused into the residual stream by a context-aware gate.

Per token: rows e = concat over columns of table[row id]   ([num_columns * head_dim] = engram_hidden)
Per hyper-connection branch m (hidden h^m, D = hidden_size):
    s^m     = <RMSNorm1^m(W_K^m e), RMSNorm2^m(h^m)> / sqrt(D)
    alpha^m = sigmoid(sign(s^m) * sqrt(max(|s^m|, 1e-6)))
    V~^m    = alpha^m * (W_V e)              (one value projection shared by all branches)
    Y^m     = V~^m + SiLU(CausalDepthwiseConv(RMSNorm^m(V~^m)))   (kernel 4, dilation max_ngram_size)
The caller adds Y^m to branch m. Parameter names match the reference (engram_demo_v1.py), so its
state dicts load with `load_reference_state_dict`. hc_mult=1 serves plain residual backbones, which
may pass hidden states as [B, T, D].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.config import EngramConfig
from core.geometry import TableGeometry
from core.row_format import RowFormat
from kernels import use_triton

from .table_backend import LocalTableBackend, TableBackend


class MultiHeadEmbedding(nn.Module):
    """Per-sub-table indices [B, T, C] -> concatenated rows [B, T, C * head_dim] from a backend."""

    def __init__(self, table_sizes: list[int], head_dim: int, backend: TableBackend, layer_id: int):
        super().__init__()
        self.head_dim, self.layer_id = head_dim, layer_id
        self.table_sizes = list(table_sizes)
        offsets = [0]
        for size in table_sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))
        self.embedding = backend  # named as the reference's nn.Embedding, whose weight it replaces

    def forward(self, hash_ids: torch.Tensor, dtype: torch.dtype, step=None) -> torch.Tensor:
        """With the prefetcher's `step`, the rows it fetched for this layer (it computed the row ids
        once, at forward entry); else the backend's rows of hash_ids + the sub-tables' offsets."""
        if step is not None:
            rows = step.embeddings(self.layer_id, hash_ids, self.embedding.row_format, dtype)
        else:
            rows = self.embedding.lookup(hash_ids + self.offsets.to(hash_ids.device), dtype)
        return rows.flatten(start_dim=-2)


class ShortConv(nn.Module):
    """Per-branch RMSNorm, then a causal depthwise conv over time and SiLU, on [B, T, M, D].

    The conv is written as an explicit sum of K shifted products (in float32), so a sequence fed in
    chunks with `state` (the last (K-1)*dilation normed inputs) gives bit-identical outputs to the
    same sequence fed whole. The weight lives in an nn.Conv1d for the reference's parameter name."""

    def __init__(self, hidden_size: int, kernel_size: int, dilation: int, hc_mult: int,
                 norm_eps: float = 1e-5):
        super().__init__()
        channels = hidden_size * hc_mult
        self.kernel_size, self.dilation, self.hc_mult = kernel_size, dilation, hc_mult
        self.context = (kernel_size - 1) * dilation  # past inputs one output reads
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False,
                              dilation=dilation, padding=self.context)
        nn.init.zeros_(self.conv.weight)  # starts as identity of the Engram block: Y = V~
        self.norms = nn.ModuleList(nn.RMSNorm(hidden_size, eps=norm_eps) for _ in range(hc_mult))

    def new_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zeros [B, (K-1)*dilation, M*D]: what the conv sees before a sequence's first token."""
        channels = self.conv.weight.shape[0]
        return torch.zeros(batch_size, self.context, channels, device=device,
                           dtype=dtype or self.conv.weight.dtype)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, lengths=None) -> torch.Tensor:
        B, T, M, D = x.shape
        normed = torch.cat([self.norms[m](x[:, :, m]) for m in range(M)], dim=-1)  # [B, T, M*D]
        past = state if state is not None else self.new_state(B, x.device, normed.dtype)
        ext = torch.cat([past.to(normed.dtype), normed], dim=1)                   # [B, ctx+T, M*D]
        weight = self.conv.weight[:, 0, :].float()                                 # [M*D, K]
        y = torch.zeros(B, T, M * D, device=x.device, dtype=torch.float32)
        for k in range(self.kernel_size):  # K = 4 vectorized multiply-adds, oldest tap first
            y = y + weight[:, k] * ext[:, k * self.dilation:k * self.dilation + T].float()
        if state is not None:
            _advance(state, ext, T if lengths is None else lengths, self.context)
        return F.silu(y).to(x.dtype).view(B, T, M, D)


class Engram(nn.Module):
    def __init__(self, config: EngramConfig, layer_id: int, backend: TableBackend | None = None):
        super().__init__()
        if layer_id not in config.layer_ids:
            raise ValueError(f"layer_id {layer_id} is not one of EngramConfig.layer_ids {config.layer_ids}")
        self.config, self.layer_id = config, layer_id
        table_sizes = TableGeometry.from_config(config).table_sizes[layer_id]
        row_format = RowFormat(config.row_dtype, config.head_dim)
        if backend is None:
            backend = LocalTableBackend.seeded(sum(table_sizes), row_format, config.seed, layer_id)
        if backend.row_format != row_format or backend.num_rows != sum(table_sizes):
            raise ValueError(f"table backend holds {backend.num_rows} rows as {backend.row_format}; "
                             f"layer {layer_id} needs {sum(table_sizes)} rows as {row_format}")
        H, E, M = config.hidden_size, config.engram_hidden_size, config.hc_mult
        self.multi_head_embedding = MultiHeadEmbedding(table_sizes, config.head_dim, backend, layer_id)
        self.short_conv = ShortConv(H, config.kernel_size, config.max_ngram_size, M)
        self.value_proj = nn.Linear(E, H)
        self.key_projs = nn.ModuleList(nn.Linear(E, H) for _ in range(M))
        self.norm1 = nn.ModuleList(nn.RMSNorm(H) for _ in range(M))  # on keys
        self.norm2 = nn.ModuleList(nn.RMSNorm(H) for _ in range(M))  # on hidden states
        self.gate_sink: list | None = None  # a list: each forward's gates are appended (PyTorch path)

    @property
    def dtype(self) -> torch.dtype:
        return self.value_proj.weight.dtype

    def new_conv_state(self, batch_size: int, device=None) -> torch.Tensor:
        return self.short_conv.new_state(batch_size, device or self.value_proj.weight.device, self.dtype)

    def forward(self, hidden_states: torch.Tensor, hash_ids: torch.Tensor,
                conv_state: torch.Tensor | None = None, lengths=None, step=None) -> torch.Tensor:
        """hidden_states [B, T, M, D] (or [B, T, D] when hc_mult == 1); hash_ids int [B, T, C] from
        NgramHasher.hash()[layer_id]; conv_state from new_conv_state() for chunked prefill and
        decode (advanced in place by each row's first lengths[b] tokens). Returns Y, shaped like
        hidden_states, for the caller to add to the residual branches. step: the prefetcher's Step
        of this forward pass, where the table is remote (the layer reads its rows from it)."""
        plain = hidden_states.dim() == 3 and self.config.hc_mult == 1
        h = hidden_states.unsqueeze(2) if plain else hidden_states
        self._check(h, hash_ids, conv_state)
        embeddings = self.multi_head_embedding(hash_ids, self.dtype, step)         # [B, T, E]
        if use_triton(h):  # one fused kernel for norms, dot, signed sqrt, sigmoid and scaling
            from kernels.gate import gate
            keys = torch.stack([proj(embeddings) for proj in self.key_projs], dim=2)  # [B, T, M, D]
            value = gate(keys, h, self.value_proj(embeddings),
                         torch.stack([n.weight for n in self.norm1]), torch.stack([n.weight for n in self.norm2]),
                         _eps(self.norm1[0], self.dtype), _eps(self.norm2[0], self.dtype))
        else:
            gates = []
            for m in range(self.config.hc_mult):
                key = self.norm1[m](self.key_projs[m](embeddings))
                query = self.norm2[m](h[:, :, m])
                s = (key * query).sum(dim=-1) / math.sqrt(self.config.hidden_size)
                s = s.abs().clamp_min(1e-6).sqrt() * s.sign()
                gates.append(s.sigmoid().unsqueeze(-1))
            if self.gate_sink is not None:  # `engram-memory gate` reads alpha per token and branch
                self.gate_sink.append(torch.cat(gates, dim=-1).detach())        # [B, T, M]
            value = torch.stack(gates, dim=2) * self.value_proj(embeddings).unsqueeze(2)  # [B, T, M, D]
        out = value + self.short_conv(value, conv_state, lengths)
        return out.squeeze(2) if plain else out

    def load_reference_state_dict(self, state_dict: dict, strict: bool = True):
        """Load a reference Engram's parameters (keys relative to the Engram module). The table
        weight goes to a local backend; a remote backend's rows come from the memory service."""
        state = dict(state_dict)
        weight = state.pop("multi_head_embedding.embedding.weight", None)
        offsets = state.pop("multi_head_embedding.offsets", None)
        ours = self.multi_head_embedding.offsets
        if offsets is not None and not torch.equal(offsets.cpu().long(), ours.cpu()):
            raise ValueError("multi_head_embedding.offsets in the state dict differ from this config's "
                             "sub-table offsets: the checkpoint was trained with another geometry")
        state["multi_head_embedding.offsets"] = ours  # derived from the config, never loaded
        if weight is not None:
            if not hasattr(self.multi_head_embedding.embedding, "load_weight"):
                raise ValueError("this Engram's table backend is read-only; load the table into the "
                                 "memory service instead")
            self.multi_head_embedding.embedding.load_weight(weight)
        elif strict and isinstance(self.multi_head_embedding.embedding, LocalTableBackend):
            raise KeyError("missing multi_head_embedding.embedding.weight for the local table")
        return self.load_state_dict(state, strict=strict)

    def _check(self, h, hash_ids, conv_state):
        cfg = self.config
        if h.dim() != 4 or h.shape[2] != cfg.hc_mult or h.shape[3] != cfg.hidden_size:
            raise ValueError(f"hidden_states must be [B, T, hc_mult={cfg.hc_mult}, "
                             f"hidden_size={cfg.hidden_size}]; got {tuple(h.shape)}")
        if h.dtype != self.dtype and not torch.is_autocast_enabled(h.device.type):  # training: bf16 autocast
            raise TypeError(f"hidden_states dtype {h.dtype} differs from the module's {self.dtype}; "
                            "cast one of them")
        if hash_ids.dtype.is_floating_point or hash_ids.dtype == torch.bool:
            raise TypeError(f"hash_ids must be an integer tensor; got {hash_ids.dtype}")
        expected = (h.shape[0], h.shape[1], cfg.num_columns)
        if tuple(hash_ids.shape) != expected:
            raise ValueError(f"hash_ids must be [B, T, num_columns] = {list(expected)}; "
                             f"got {tuple(hash_ids.shape)}")
        if h.shape[0] == 0 or h.shape[1] == 0:
            raise ValueError(f"empty batch: hidden_states has shape {tuple(h.shape)}")
        if conv_state is not None and tuple(conv_state.shape) != (
                h.shape[0], self.short_conv.context, cfg.hc_mult * cfg.hidden_size):
            raise ValueError(f"conv_state must be [B, {self.short_conv.context}, "
                             f"{cfg.hc_mult * cfg.hidden_size}]; got {tuple(conv_state.shape)} "
                             "(make it with new_conv_state)")


def _eps(norm: nn.RMSNorm, dtype: torch.dtype) -> float:
    """nn.RMSNorm's epsilon: its own, or the dtype's machine epsilon when it has none (as F.rms_norm)."""
    return norm.eps if norm.eps is not None else torch.finfo(dtype).eps


def _advance(state: torch.Tensor, ext: torch.Tensor, lengths, context: int) -> None:
    """state <- the last `context` rows of (state ++ the first lengths[b] new rows)."""
    if isinstance(lengths, int):
        state.copy_(ext[:, lengths:lengths + context])
        return
    lengths = torch.as_tensor(lengths, device=ext.device).long()
    rows = lengths[:, None] + torch.arange(context, device=ext.device)              # [B, ctx]
    state.copy_(torch.gather(ext, 1, rows[..., None].expand(-1, -1, ext.shape[-1])))
