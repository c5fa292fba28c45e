#!/usr/bin/env bash
# Issue 20 on two H200s of one host (the device kind nvidia-h200-x2), in one call of under 10 minutes:
#   1. `engram-memory train` at world sizes 1 and 2 over NCCL, the tables sharded by rows: float32
#      (--no-autocast) for the loss check against the CPU test's tolerance, then bf16 autocast (how
#      it trains) for step time and the exchange's share at the same global batch;
#   2. one memory service shared by 1 and then 2 model workers, one per GPU (bench workers):
#      aggregate tokens/s against one worker, each worker's ratio to local tables.
#   bench/two_gpu_h200.sh OUT      (python3 with this checkout on PYTHONPATH; the shared corpora)
# NCCL's settings on that machine (NCCL_NVLS_ENABLE=0 and the like) are left as they are: recorded,
# never changed.
set -euo pipefail
out=${1:?usage: bench/two_gpu_h200.sh OUT}
mkdir -p "$out"
em() { python3 -m cli "$@"; }
{ nvidia-smi -L; nvidia-smi topo -m; env | grep '^NCCL_' || true; } > "$out/machine.txt" 2>&1
gpus=$(nvidia-smi -L | wc -l)
[ "$gpus" -ge 2 ] || { echo "needs two GPUs, this machine has $gpus" >&2; exit 2; }

train=(--world-sizes 1 2 --device cuda --eval-every 0 --eval-batches 2 --no-progress)
em bench train-world "${train[@]}" --no-autocast --steps 30 --out /tmp/tw-fp32 --results "$out/train_world_h200x2_fp32.json"
# under bf16 autocast each rank rounds its half batch its own way: the loss check may flag it
em bench train-world "${train[@]}" --steps 120 --out /tmp/tw-bf16 --results "$out/train_world_h200x2_bf16.json" \
    || echo "bf16: losses beyond the float32 tolerance (autocast); the float32 run above is the check"

# the model and workload of BENCHMARKS.md's one-GPU run (256 sequences: two workers' KV caches fit one GPU there)
em bench workers --device cuda --data-dir /tmp/data --config demo --row-dtype bfloat16 --num-layers 16 \
    --hidden-size 2048 --heads 16 --hc-mult 1 --sequences 256 --min-len 100 --max-len 1024 --decode-steps 32 \
    --prefill-batch 64 --device-cache-mb 128 --server-workers 8 --repeats 3 --worker-counts 1 2 \
    --out "$out/workers_h200x2.json"
