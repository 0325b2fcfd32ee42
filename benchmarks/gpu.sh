#!/usr/bin/env bash
# The GPU figures in one prepared command, about 8 minutes on an H100/H200 (README of benchmarks/):
#   1. seconds per CIFAR-10 epoch, SimSiam CIFAR ResNet-18 (paper recipe), batch 512, bf16, eager;
#   2. the same with --compile (after its warm-up epoch);
#   3. kNN top-1 after a 5-minute training budget (the epochs that fit, cosine to 0 at the end);
#   4. ResNet-50 at 224 px (imagenet preset, synthetic uint8 images): images/s and vs-bare ratio;
#   5. CIFAR ResNet-18 at batch 512: images/s and vs-bare ratio (benchmarks/throughput.py).
#
#   bash benchmarks/gpu.sh [CIFAR10_JPEG_TARBALL]      # default ../shared/datasets/cifar10-jpeg.tar.gz
#   SMOKE=1 bash benchmarks/gpu.sh                     # the same plumbing in about a minute on a CPU
#   BUDGET=150 bash benchmarks/gpu.sh                  # a shorter training budget for step 3 (seconds)
#
# Needs torch, torchvision, numpy, pillow, scikit-learn, tqdm, matplotlib, safetensors (the H200
# image has them); simsiam runs from src/ without an install. Results: $OUT (the device tool's
# folder) or benchmarks/.cache/gpu: gpu.md (the table), the runs' summary.json files and
# RESULTS.md with the throughput sections.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
OUT="${OUT:-benchmarks/.cache/gpu}"
mkdir -p "$OUT"
export SIMSIAM_CACHE="${SIMSIAM_CACHE:-/tmp/simsiam-cache}"
TAR="${1:-../shared/datasets/cifar10-jpeg.tar.gz}"
DATA=/tmp/simsiam-gpu-data
[ -d "$DATA/cifar10" ] || { mkdir -p "$DATA" && tar xzf "$TAR" -C "$DATA"; } || { echo "no CIFAR-10 at $TAR"; exit 2; }

BUDGET=${BUDGET:-300} EPOCH=(--preset cifar10) TP=(--seconds 10 --rounds 2) TP50=(--batch-size 256) TP18=(--batch-size 512)
if [ "${SMOKE:-0}" = 1 ]; then  # tiny everything, to check this script on any machine
    BUDGET=10 EPOCH=(--preset cifar10 --subset 2048 --width 0.125 --batch-size 256)
    TP=(--seconds 1 --rounds 1) TP50=(--batch-size 16 --set width=0.125 --set image_size=64 --set load_size=72)
    TP18=(--batch-size 64 --set width=0.125)
fi
COMMON=(--data-dir "$DATA/cifar10" --knn-every 0 --no-knn-random-init --no-report)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; \
  python -c "import torch; print('torch', torch.__version__)"; git rev-parse --short HEAD 2>/dev/null; } > "$OUT/machine.txt"

epoch_seconds() {  # the last epoch's seconds of a run directory
    python -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['epoch_seconds'])" "$1/metrics.jsonl"
}
start=$(date +%s)
# 1-2: two epochs each; the second epoch's time (the first holds the warm-up / compilation)
python -m simsiam train "${EPOCH[@]}" "${COMMON[@]}" --epochs 2 --run-dir "$OUT/eager" > "$OUT/eager.log" 2>&1
python -m simsiam train "${EPOCH[@]}" "${COMMON[@]}" --epochs 2 --compile --run-dir "$OUT/compiled" > "$OUT/compiled.log" 2>&1
eager=$(epoch_seconds "$OUT/eager") compiled=$(epoch_seconds "$OUT/compiled")
eager=$(printf %.2f "$eager") compiled=$(printf %.2f "$compiled")
# 3: the epochs that fit in the budget at the faster of the two speeds
fast=$(python -c "print(min($eager, $compiled))")
flag=$(python -c "print('--compile' if $compiled < $eager else '--no-compile')")
epochs=$(python -c "print(max(1, int($BUDGET / $fast)))")
python -m simsiam train "${EPOCH[@]}" "${COMMON[@]}" --epochs "$epochs" "$flag" --run-dir "$OUT/budget" > "$OUT/budget.log" 2>&1
knn=$(python -c "import json; s=json.load(open('$OUT/budget/summary.json')); print(f\"{100*s['knn_top1']:.2f}% after {s['train_seconds']:.0f} s of training\")")
# 4-5: throughput against the bare step; their RESULTS.md sections go to $OUT, the file here is put back
cp benchmarks/RESULTS.md "$OUT/RESULTS.before.md"
python benchmarks/throughput.py --preset imagenet --set arch=resnet50 "${TP50[@]}" "${TP[@]}" --note "gpu.sh" > "$OUT/resnet50.txt" 2>&1
cp benchmarks/RESULTS.md "$OUT/RESULTS-resnet50.md"
python benchmarks/throughput.py --preset cifar10 "${TP18[@]}" "${TP[@]}" --note "gpu.sh" > "$OUT/cifar.txt" 2>&1
cp benchmarks/RESULTS.md "$OUT/RESULTS-cifar.md"
cp "$OUT/RESULTS.before.md" benchmarks/RESULTS.md

{
    echo "## GPU figures (benchmarks/gpu.sh), $(date '+%Y-%m-%d %H:%M'), $(tr '\n' ' ' < "$OUT/machine.txt")"
    echo
    echo "| measure | value |"
    echo "|---|---:|"
    echo "| CIFAR-10 epoch, ResNet-18 (CIFAR), batch 512, eager | ${eager} s |"
    echo "| the same with --compile (second epoch) | ${compiled} s |"
    echo "| kNN top-1 after a ${BUDGET} s budget (${epochs} epochs, $flag) | ${knn} |"
    echo
    echo "ResNet-50 at 224 px, synthetic uint8 at 256 px (${TP50[*]}):"
    grep -E '^\| (step|ours|bare)|^\|---|^Pipeline' "$OUT/resnet50.txt"
    echo
    echo "CIFAR ResNet-18 (${TP18[*]}):"
    grep -E '^\| (step|ours|bare)|^\|---|^Pipeline' "$OUT/cifar.txt"
    echo
    echo "total $(( $(date +%s) - start )) s"
} | tee "$OUT/gpu.md"
