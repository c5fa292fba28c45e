"""NgramHasher: token ids -> per-sub-table row indices of every Engram layer, equal to the reference.

For compressed ids x' and layer L with odd multipliers m_0..m_{N-1} (N = max_ngram_size):
    shift_k(x')[t] = x'[t - k]  (the compressed pad id before the sequence start)
    mix_n = XOR_{k<n} shift_k(x') * m_k         (int64, wrapping)
    head j of order n reads row  mix_n mod p_{n,j}   (floor mod: always in [0, p))
Columns are ordered order 2 heads 0..K-1, then order 3, ... .

Everything is vectorized over layers, tokens and heads; torch inputs stay on their device. A
`LookbackState` holds each sequence's last N-1 compressed ids, so hashing a sequence chunk by chunk
(chunked prefill, then one token per decode step) gives exactly the indices of hashing it whole.
"""
from __future__ import annotations

import numpy as np

from core.config import EngramConfig
from core.geometry import TableGeometry
from core.tokenizer import CompressedTokenizer, check_ids_in_range, get_compressed_tokenizer
from kernels import use_triton

_INT64_MAX = np.iinfo(np.int64).max
_LAYER_PRIME = 10007  # the reference's per-layer seed stride


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class LookbackState:
    """The last max_ngram_size - 1 compressed ids of each sequence in a batch ([B, N-1] int64, numpy
    or torch); a fresh row is all pad, which is exactly the reference's padding."""

    def __init__(self, ids):
        self.ids = ids

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    def reset(self, rows, pad_id: int) -> None:
        """Start new sequences in the given batch rows (continuous batching reuses slots)."""
        self.ids[rows] = pad_id


class NgramHasher:
    def __init__(self, config: EngramConfig, tokenizer: CompressedTokenizer | None = None):
        self.config = config
        self.tokenizer = tokenizer or get_compressed_tokenizer(config.tokenizer)
        self.geometry = TableGeometry.from_config(config)
        self.table_sizes = self.geometry.table_sizes
        self.compressed_vocab_size = self.tokenizer.num_compressed
        if config.pad_id >= self.tokenizer.vocab_size:
            raise ValueError(f"EngramConfig.pad_id: {config.pad_id} is outside the tokenizer's "
                             f"vocabulary [0, {self.tokenizer.vocab_size})")
        self.pad_id = int(self.tokenizer.lookup[config.pad_id])  # compressed, as in the reference

        # Odd multipliers below int64_max / V' so that one product spans the int64 range.
        half_bound = max(1, (_INT64_MAX // self.compressed_vocab_size) // 2)
        self.multipliers = {}
        for layer_id in config.layer_ids:
            rng = np.random.default_rng(config.seed + _LAYER_PRIME * layer_id)
            r = rng.integers(0, half_bound, size=config.max_ngram_size, dtype=np.int64)
            self.multipliers[layer_id] = r * 2 + 1
        layers = config.layer_ids
        self._mult = np.stack([self.multipliers[layer] for layer in layers])           # [L, N]
        self._primes = np.array([self.table_sizes[layer] for layer in layers], np.int64)  # [L, C]
        self._offsets = np.stack([self.geometry.offsets(layer) for layer in layers])    # [L, C]
        self._device_consts: dict = {}

    # ---- public API ---------------------------------------------------------------------------------
    def new_state(self, batch_size: int, device=None) -> LookbackState:
        """A fresh lookback state; numpy unless `device` is given (then a torch tensor there)."""
        shape = (batch_size, self.config.max_ngram_size - 1)
        if device is None:
            return LookbackState(np.full(shape, self.pad_id, dtype=np.int64))
        import torch
        return LookbackState(torch.full(shape, self.pad_id, dtype=torch.int64, device=device))

    def compress(self, input_ids, validate: bool = True):
        """Raw ids -> compressed ids (int64), numpy or torch (on the input's device)."""
        if validate:
            check_ids_in_range(input_ids, self.tokenizer.vocab_size)
        if _is_torch(input_ids):
            return self._consts(input_ids.device)["lookup"][input_ids.long()]
        return self.tokenizer.lookup[input_ids]

    def hash(self, input_ids, state: LookbackState | None = None, lengths=None,
             compressed: bool = False, validate: bool = True) -> dict:
        """{layer_id: int64 [B, T, num_columns]} per-sub-table indices. See `hash_stacked`."""
        stacked = self.hash_stacked(input_ids, state, lengths, compressed, validate)
        return {layer: stacked[i] for i, layer in enumerate(self.config.layer_ids)}

    def hash_stacked(self, input_ids, state: LookbackState | None = None, lengths=None,
                     compressed: bool = False, validate: bool = True):
        """int64 [num_layers, B, T, num_columns] indices for raw ids [B, T] (numpy or torch).

        state:   optional lookback of the sequences' earlier tokens; read, then advanced in place.
        lengths: optional int [B] valid tokens per row (right padding); only the first lengths[b]
                 tokens of row b advance its state. Outputs past lengths[b] are not meaningful.
        validate: check dtype, rank and vocabulary range (one device sync for CUDA inputs).
        """
        return self.hash_and_rows(input_ids, state, lengths, compressed, validate, rows=False)[0]

    def hash_and_rows(self, input_ids, state: LookbackState | None = None, lengths=None,
                      compressed: bool = False, validate: bool = True, rows: bool = True):
        """(indices [L, B, T, C], global row ids [L, B, T, C] or None if not `rows`): on CUDA one
        Triton launch for both (kernels.hashing), else `hash_stacked`'s ops + `row_ids_stacked`."""
        x = self._check_input(input_ids, state, lengths)
        torch_mode = _is_torch(x)
        if torch_mode and use_triton(x):
            return self._hash_kernel(x, state, lengths, compressed, validate, rows)
        if not compressed:
            x = self.compress(x, validate=validate)
        elif validate:
            check_ids_in_range(x, self.compressed_vocab_size)
        x = x.long() if torch_mode else x.astype(np.int64, copy=False)
        B, T = x.shape
        P = self.config.max_ngram_size - 1
        if state is not None:
            lookback = state.ids
        elif torch_mode:
            import torch
            lookback = torch.full((B, P), self.pad_id, dtype=torch.int64, device=x.device)
        else:
            lookback = np.full((B, P), self.pad_id, dtype=np.int64)
        ext = _cat(lookback, x)  # [B, P + T]: column P + t is token t
        out = self._hash_extended(ext, T)
        if state is not None:
            self._advance(state, ext, T if lengths is None else lengths)
        return out, (self.row_ids_stacked(out) if rows else None)

    def row_ids(self, layer_id: int, indices):
        """Global row ids of one layer's table: per-sub-table index + the sub-table's offset."""
        i = self.config.layer_ids.index(layer_id)
        if _is_torch(indices):
            return indices + self._consts(indices.device)["offsets"][i]
        return indices + self._offsets[i]

    def row_ids_stacked(self, stacked):
        """Global row ids for `hash_stacked` output [L, B, T, C]."""
        if _is_torch(stacked):
            return stacked + self._consts(stacked.device)["offsets"][:, None, None, :]
        return stacked + self._offsets[:, None, None, :]

    # ---- internals ----------------------------------------------------------------------------------
    def _hash_kernel(self, x, state, lengths, compressed, validate, rows):
        import torch

        from kernels.hashing import hash_layers
        if validate:
            check_ids_in_range(x, self.compressed_vocab_size if compressed else self.tokenizer.vocab_size)
        consts = self._consts(x.device)
        B, P = x.shape[0], self.config.max_ngram_size - 1
        lookback = state.ids if state is not None else torch.full(
            (B, P), self.pad_id, dtype=torch.int64, device=x.device)
        if lengths is not None:
            lengths = lengths.to(x.device)
        idx, row_ids, new_state = hash_layers(x, lookback, consts["mult"], consts["primes"],
                                              consts["offsets"] if rows else None,
                                              None if compressed else consts["lookup"], lengths)
        if state is not None:
            state.ids.copy_(new_state)
        return idx, row_ids

    def _consts(self, device):
        key = str(device)
        if key not in self._device_consts:
            import torch
            as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
            self._device_consts[key] = {"lookup": as_t(self.tokenizer.lookup), "mult": as_t(self._mult),
                                        "primes": as_t(self._primes), "offsets": as_t(self._offsets)}
        return self._device_consts[key]

    def _hash_extended(self, ext, T: int):
        N, K = self.config.max_ngram_size, self.config.n_head_per_ngram
        P = N - 1
        if _is_torch(ext):
            consts = self._consts(ext.device)
            mult, primes = consts["mult"], consts["primes"]
            import torch
            shifts = torch.stack([ext[:, P - k:P - k + T] for k in range(N)])          # [N, B, T]
        else:
            mult, primes = self._mult, self._primes
            shifts = np.stack([ext[:, P - k:P - k + T] for k in range(N)])
        products = shifts[None] * mult[:, :, None, None]                               # [L, N, B, T]
        mix = products[:, 0] ^ products[:, 1]
        orders = []
        for n in range(2, N + 1):  # N - 1 orders, each a vectorized op over layers x tokens x heads
            if n > 2:
                mix = mix ^ products[:, n - 1]
            p = primes[:, (n - 2) * K:(n - 1) * K]
            orders.append(mix[..., None] % p[:, None, None, :])                        # [L, B, T, K]
        if _is_torch(ext):
            return torch.cat(orders, dim=-1)
        return np.concatenate(orders, axis=-1)

    def _advance(self, state: LookbackState, ext, lengths) -> None:
        """New lookback = the last P ids of (old lookback ++ the row's first lengths[b] tokens)."""
        P = self.config.max_ngram_size - 1
        if isinstance(lengths, int):
            state.ids[:] = ext[:, lengths:lengths + P]
            return
        if _is_torch(ext):
            import torch
            cols = lengths.to(ext.device).long()[:, None] + torch.arange(P, device=ext.device)
            state.ids[:] = torch.gather(ext, 1, cols)
        else:
            cols = np.asarray(lengths, dtype=np.int64)[:, None] + np.arange(P)
            state.ids[:] = np.take_along_axis(ext, cols, axis=1)

    def _check_input(self, input_ids, state, lengths):
        x = input_ids if _is_torch(input_ids) or isinstance(input_ids, np.ndarray) else np.asarray(input_ids)
        if _is_torch(x):
            bad_dtype = x.dtype.is_floating_point or x.dtype.is_complex or str(x.dtype) == "torch.bool"
        else:
            bad_dtype = not np.issubdtype(x.dtype, np.integer)
        if bad_dtype:
            raise TypeError(f"input_ids must hold integer token ids; got dtype {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"input_ids must be rank 2 [batch, tokens]; got shape {tuple(x.shape)}")
        B, T = x.shape
        if B == 0 or T == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(x.shape)}; need at least one sequence "
                             "and one token")
        if state is not None:
            if state.batch_size != B:
                raise ValueError(f"state holds {state.batch_size} sequences but input_ids has {B}")
            if _is_torch(state.ids) != _is_torch(x):
                raise TypeError("state and input_ids must both be numpy or both torch")
        if lengths is not None:
            if tuple(lengths.shape) != (B,):
                raise ValueError(f"lengths must have shape [{B}]; got {tuple(lengths.shape)}")
            if bool((lengths < 0).any()) or bool((lengths > T).any()):
                raise ValueError(f"lengths must lie in [0, {T}] (tokens per row of input_ids)")
        return x


def _cat(a, b):
    if _is_torch(a):
        import torch
        return torch.cat([a, b.to(a.device)], dim=1)
    return np.concatenate([a, b], axis=1)
