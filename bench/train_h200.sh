#!/usr/bin/env bash
# The H200 run behind BENCHMARKS.md's "Training an Engram model on the H200", one model at a time
# on the GPU: the default Engram model, the same backbone without Engram (iso-FLOPs) and the
# backbone widened to 1152 (iso-parameters), on the same tokens for the same steps; their loss
# curves and metrics (bench/train_plot.py); the Engram model's gate (English and Chinese text, the
# fixed-phrase figure); then the Engram model served, generating text through the memory service
# from held-out documents (`bench e2e --checkpoint`: local vs served tables, bit-compared).
#   bench/train_h200.sh OUT [STEPS]      (python3 with this checkout on PYTHONPATH; the shared corpora)
#   GATE_FONT=FILE: a CJK font file for the gate PNGs' labels where none is installed
set -euo pipefail
out=${1:?usage: bench/train_h200.sh OUT [STEPS]}
steps=${2:-500}   # 500 x 16,384 tokens = 1.95 epochs of the 4.2M training tokens; later it overfits
run=${RUN_DIR:-/tmp/engram-train}
em() { python3 -m cli "$@"; }
mkdir -p "$out" "$run"

common=(--steps "$steps" --eval-every 50 --eval-batches 8 --max-seconds 200 --no-progress)
em train "${common[@]}" --out "$run/engram"
em train "${common[@]}" --out "$run/base" --no-engram
em train "${common[@]}" --out "$run/iso" --no-engram --hidden-size 1152
checkpoint=$run/engram/model.safetensors.index.json
em gate --checkpoint "$checkpoint" --out "$out/gate" ${GATE_FONT:+--font "$GATE_FONT"}
python3 -m bench.train_plot engram="$run/engram" base="$run/base" iso="$run/iso" --gate "$out/gate" \
    --out "$out/train_h200"

python3 - "$run" <<'PY'   # held-out documents (the training runs' validation split) as prompt files
import sys
from pathlib import Path
from training.token_windows import corpus_files, split_documents
for name in ("en/brown.txt", "zh/msra_news.txt"):
    docs = split_documents(corpus_files([name]), 100)["val"]
    Path(sys.argv[1], f"heldout_{name.split('/')[0]}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
PY
for lang in en zh; do
    em bench e2e --checkpoint "$checkpoint" --data-dir "$run/data" --device cuda \
        --prompts-from "$run/heldout_$lang.txt" --sequences 8 --min-len 64 --max-len 256 --decode-steps 32 \
        --repeats 3 --out "$out/e2e_trained_$lang.json"
done
