#!/usr/bin/env bash
# The parameter-efficient fine-tuning experiment of docs/training.md: the shipped tiny model (trained
# without "corner" questions) learns the new question type "In which corner of the image is the X?"
# by LoRA, by state tuning and, for comparison, by full fine-tuning (the `finetune` preset: the same
# data, batch and steps); held-out accuracy per type before and after, and what each run cost.
#   scripts/adapter_experiment.sh [OUT]        (default OUT=runs/adapters; about 20 min on 2 cores)
# VR is the visualrwkv command (default "python -m visualrwkv"); PY the Python that has visualrwkv
# (default: VR's interpreter when VR is "<python> -m visualrwkv", else python).
set -euo pipefail
OUT=${1:-runs/adapters}
VR=${VR:-"python -m visualrwkv"}
if [[ -z "${PY:-}" ]]; then
  PY=${VR% -m visualrwkv}
  [[ "$PY" == "$VR" ]] && PY=python
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
# 1. data: 800 training images, 3 questions each, corner weighted 3:1 against each old type (the old
#    types are replayed so that they are not forgotten); 600 held-out images, balanced over all 6 types
$PY - "$OUT/data" <<'PY'
import sys
from visualrwkv.data.shapes import QUESTION_TYPES, generate_shapes_dataset
weights = {t: 1.0 for t in QUESTION_TYPES} | {"corner": 3.0}
generate_shapes_dataset(sys.argv[1], num_train_images=800, num_test_images=600, seed=7, extra_types=("corner",),
                        train_weights=weights)
PY
# 2. the base model before fine-tuning
$VR eval heldout --data "$OUT/data/test.json" --out "$OUT/base.json"
# 3. LoRA, state tuning and full fine-tuning, each fitted to the data by its preset (so the same batch and
#    number of steps), timed by /usr/bin/time -v (peak resident memory); then the same held-out evaluation
for preset in finetune-lora finetune-state finetune; do
  /usr/bin/time -v $VR train --config $preset --data "$OUT/data/stage2.json" --runs-dir "$OUT" \
      --progress false 2> "$OUT/$preset.time" | tee "$OUT/$preset.log"
done
$VR eval heldout --data "$OUT/data/test.json" --adapter "$OUT/finetune-lora/final" --out "$OUT/lora.json"
$VR eval heldout --data "$OUT/data/test.json" --state "$OUT/finetune-state/final/state.safetensors" \
    --out "$OUT/state.json"
$VR eval heldout --data "$OUT/data/test.json" --model "$OUT/finetune/final" --out "$OUT/full.json"
# 4. the tables of docs/training.md
$PY "$HERE/adapter_summary.py" "$OUT" | tee "$OUT/summary.md"
