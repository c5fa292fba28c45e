"""What `engram-memory demo` and `bench e2e` print of a comparison (comparison.py): speeds, ratios,
waits, hit rates, whether the outputs match, and, for a trained checkpoint, the text it generated;
and the decode step's memory roofline it is read against."""
from __future__ import annotations

import statistics

import torch


def decode_roofline_ms(model, prompt_tokens: int, workload, dtype, bandwidth_tbs: float = 4.0) -> float:
    """The memory floor of the mean decode step, ms: the weights it reads (every parameter but the
    token and position embeddings, which it gathers a row of) plus the KV cache at the sequences'
    actual lengths (prompt + the step's position), at bandwidth_tbs."""
    size = torch.finfo(dtype).bits // 8
    weights = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("embed.", "pos."))) * size
    steps, seqs, b = workload.decode_steps, workload.sequences, model.cfg
    mean_context = prompt_tokens / seqs + (steps + 1) / 2          # keys per sequence, mean over the steps
    kv = seqs * mean_context * b.num_layers * 2 * b.hidden_size * size
    return (weights + kv) / (bandwidth_tbs * 1e12) * 1e3


def _cache_share(table_bytes: int, cache_bytes: int) -> str:
    if cache_bytes >= table_bytes:
        return "holds the whole tables"
    return f"{table_bytes / cache_bytes:.0f}x smaller than the tables"


def report(out: dict) -> str:
    gib = out["table_bytes"] / 2**30
    lines = [
        f"tables: {out['table_rows']:,} {out.get('row_dtype', '')} rows ({gib:.2f} GiB) in "
        f"{out.get('table_store', 'the store')}, read via {out['mode']}; device cache "
        f"{out['device_cache_bytes'] >> 20} MiB ({_cache_share(out['table_bytes'], out['device_cache_bytes'])}), host cache {out['host_cache_bytes'] >> 20} MiB, host mirror "
        f"{', '.join(out.get('host_mirror_tables', [])) or 'none'}, policy {out['policy']}, "
        f"{out.get('kernels', 'reference')} kernels",
        f"model: {out['backbone_parameters'] / 1e6:.0f}M backbone parameters, "
        + (f"trained weights from {out['checkpoint']}" if out.get("checkpoint") else
           "RANDOM weights (the output is not text; the point is Engram's data path)")
        + f", {out['dtype']} on {out['device']}",
        f"workload: {out['sequences']} sequences, {out['prefill_tokens']:,} prompt tokens, then "
        f"{out['decode_tokens']:,} decode tokens",
        "",
        f"{'phase':<9}{'local tok/s':>13}{'remote tok/s':>14}{'remote/local':>14}{'exposed wait':>14}",
    ]
    for phase in ("prefill", "decode"):
        local, remote = out[f"{phase}_local_tokens_per_s"], out[f"{phase}_remote_tokens_per_s"]
        lines.append(f"{phase:<9}{local:>13,.0f}{remote:>14,.0f}{remote / local:>14.3f}"
                     f"{out[f'{phase}_exposed_wait_share']:>13.1%}")
    lines += [f"(medians of {out['repeats']} runs each; the median of the back-to-back pairs' ratios, robust to the "
              f"machine's speed drifting: prefill {out['prefill_ratio_remote_to_local']:.3f}, decode "
              f"{out['decode_ratio_remote_to_local']:.3f}. Exposed wait: the share of the remote run's time spent "
              "waiting for rows that the layers before each Engram layer could not hide.)"]
    pairs = {phase: out.get(f"{phase}_pair_ratios", []) for phase in ("prefill", "decode")}
    if pairs["decode"]:
        lines.append("pair ratios: " + "; ".join(f"{phase} {min(r):.3f}-{max(r):.3f}" for phase, r in pairs.items()))
    if len(pairs["decode"]) > 1:  # the same medians by which mode ran first in the pair
        lines.append("by order (local first / remote first): " + "; ".join(
            f"{phase} {statistics.median(r[0::2]):.3f} / {statistics.median(r[1::2]):.3f}" for phase, r in pairs.items()))
    step = out.get("decode_step_ms")
    if step and out["device"].startswith("cuda"):  # the roofline is the H200's HBM
        lines.append(f"decode step: local {step['local']:.2f} ms, remote {step['remote']:.2f} ms; memory roofline "
                     f"{out['decode_roofline_ms']:.2f} ms (weights + KV read at 4.0 TB/s): local at "
                     f"{step['local'] / out['decode_roofline_ms']:.2f}x")
    for mode in ("local", "remote"):
        gpu = out.get(f"decode_{mode}_split_ms", {})
        if gpu:
            lines.append(f"{mode} decode step on the GPU: median {gpu['step_ms']:.2f} ms, mean {gpu['mean_step_ms']:.2f} ms; "
                         f"the run's begin + end {gpu['begin_ms']:.1f} + {gpu['end_ms']:.1f} ms")
    split = out.get("decode_remote_split_ms")
    if split:
        lines.append(f"remote decode step (CUDA graphs, GPU time): pieces {', '.join(f'{x:.2f}' for x in split['pieces_ms'])} "
                     f"ms, waits before the Engram layers {', '.join(f'{x:.3f}' for x in split['gaps_ms'])} ms; host "
                     f"(tokens wait, hash, then per layer dedup / index / read below / copy up) "
                     f"{', '.join(f'{x:.2f}' for x in split.get('host_ms', []))} ms")
    host = f"{out['host_cache_hit_rate']:.1%}" if out["host_cache_hit_rate"] is not None else "-"
    lines += ["", f"hit rates: device cache {out['device_cache_hit_rate']:.1%}, host cache {host}; "
                  f"{out.get('rows_from_host_mirror', 0):,} rows read from the host mirror, "
                  f"{out['rows_from_store']:,} from the {'LMDB' if 'lmdb' in out['mode'] else 'service'}",
              f"outputs of local and remote tables match bit for bit: {'YES' if out['outputs_match'] else 'NO'}"]
    if out.get("samples"):
        lines += ["", f"generated through the memory service (greedy, {out['decode_steps']} tokens; "
                      "[...] is the end of the prompt):"]
        lines += [f"  [...{s['prompt']!r}] -> {s['continuation']!r}" for s in out["samples"]]
    return "\n".join(lines)
