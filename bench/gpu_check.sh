#!/usr/bin/env bash
# GPU figures in one run, sized for a short lease on one H100/H200 with nothing downloadable:
#   1. model-only windows/s (bench/model_gpu.py), bf16 and the precision `auto` picks, batch 8 and 16;
#   2. end-to-end `segearth query` windows/s on a generated 12288 x 12288 DEFLATE GeoTIFF with a
#      synthetic full-size release (random weights), same precisions and batches, one and three
#      questions, with the phase timings of --json.
# Every step runs under its own time limit so the whole script ends in about 6 minutes on an H200
# (budget: install 0.5, model-only 1.5, release 1, scene 0.5, 8 queries x 20-30 s).
#
#   bench/gpu_check.sh [--wheels DIR] [--tokenizer DIR] [--tiny] [--size N]
#
#   --wheels DIR     install the .whl files of DIR (the geospatial packages the machine lacks) into a
#                    private folder first; also read from $SEGEARTH_WHEELS
#   --tokenizer DIR  phi-1.5 tokenizer files for the synthetic release; without them a small
#                    byte-level tokenizer stands in (questions tokenize a few tokens differently)
#   --tiny           smoke run on the CPU: tiny model, tiny-random, a 1024 x 1024 scene
#   --size N         side of the generated scene (default 12288)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
wheels=${SEGEARTH_WHEELS:-}
tokenizer=""
tiny=0
size=12288
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) wheels=$2; shift 2 ;;
    --tokenizer) tokenizer=$2; shift 2 ;;
    --tiny) tiny=1; size=1024; shift ;;
    --size) size=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d -t segearth-gpu-check-XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
step() { echo; echo "== [$((SECONDS - started)) s] $*"; }

# The project runs from its source tree: the model package is imported as segearth_model.
mkdir -p "$work/shim"
ln -s "$repo/model" "$work/shim/segearth_model"
export PYTHONPATH="$repo:$work/shim${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# The prompt-head cache starts empty, as on a user's first run.
export SEGEARTH_CACHE_DIR="$work/cache"

if [ -n "$wheels" ]; then
  step "installing the wheels of $wheels"
  timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" "$wheels"/*.whl
  export PYTHONPATH="$PYTHONPATH:$work/site"
fi

if [ $tiny = 1 ]; then
  device=cpu; dtypes="fp32"; batches="2"; model=tiny-random; query_limit=900
else
  device=cuda; batches="8 16"; query_limit=150
  # `auto` picks float16 on a GPU (README, "Precision"); measured once when it is bfloat16.
  auto=$(python3 -c "import torch; from segearth_model.device import resolve_precision; print(resolve_precision('auto', torch.device('cuda')))")
  dtypes="bf16"; [ "$auto" = "bfloat16" ] || dtypes="bf16 auto"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "auto resolves to $auto"
fi

step "model only: windows/s (bench/model_gpu.py)"
# A failure here costs its figures only; the end-to-end steps still run.
if [ $tiny = 1 ]; then
  timeout 900 python3 "$repo/bench/model_gpu.py" --device cpu --tiny --dtypes fp32 --batches 2 --iterations 1 ||
    echo "model only: failed or over its time limit"
else
  timeout 150 python3 "$repo/bench/model_gpu.py" --dtypes "${dtypes// /,}" --batches 8,16 --iterations 5 \
    ${tokenizer:+--tokenizer-dir "$tokenizer"} || echo "model only: failed or over its time limit"
fi

if [ $tiny = 0 ]; then
  step "writing a synthetic full-size release"
  if [ -z "$tokenizer" ]; then
    tokenizer="$work/tokenizer"
    python3 -c "import sys; from segearth_model.tiny_random import build_tiny_tokenizer; build_tiny_tokenizer().save_pretrained(sys.argv[1])" "$tokenizer"
  fi
  timeout 240 python3 "$repo/bench/model_cpu.py" --write-only "$work/release" --tokenizer-dir "$tokenizer"
  model="$work/release"
fi

step "generating a $size x $size DEFLATE GeoTIFF"
timeout 180 python3 -c "
import sys; sys.path.insert(0, sys.argv[1])
from pathlib import Path
from pipeline_bench import generate_scene
generate_scene(Path(sys.argv[2]), int(sys.argv[3]))" "$repo/bench" "$work/scene.tif" "$size"
ls -l "$work/scene.tif"

questions=("Which part of this airport image could a small plane use for landing?"
           "Where are the buildings with the largest roofs?"
           "Which area of water could a ship use to reach the harbour?")
step "end to end: segearth query --mode tiled, windows/s and phases (s)"
for dtype in $dtypes; do
  for batch in $batches; do
    for count in 1 3; do
      rm -f "$work/answer.tif"
      asked=("${questions[0]}")
      for extra in "${questions[@]:1:$((count - 1))}"; do asked+=(--question "$extra"); done
      if ! timeout "$query_limit" python3 -m segearth_cli.cli query "$work/scene.tif" "${asked[@]}" \
          --model "$model" --device "$device" --dtype "$dtype" --batch-size "$batch" --mode tiled \
          -o "$work/answer.tif" --json --quiet > "$work/summary.json"; then
        echo "$dtype batch $batch, $count question(s): failed or over its time limit"
        continue
      fi
      python3 - "$work/summary.json" "$dtype" "$batch" "$count" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
timings = summary["timings"]
windows = summary["windows_run"]
print(f"{sys.argv[2]} batch {sys.argv[3]}, {sys.argv[4]} question(s): {windows} windows; "
      f"{windows / timings['model']:.1f} windows/s in the model, {windows / timings['total']:.1f} end to end "
      f"(query), command {timings['command']:.1f} s")
print("  phases: " + ", ".join(f"{name} {value:.2f}" for name, value in timings.items()))
EOF
    done
  done
done
step "done"
