#!/usr/bin/env bash
# Every CUDA path of silc-eval, timed, with the ratios; under 8 minutes on one modern GPU.
#
#   bash benchmarks/perf/gpu.sh                    # on a machine with CUDA (exits 2 with one line without)
#   DEVICE=cpu bash benchmarks/perf/gpu.sh         # the same steps on the CPU with tiny sizes: checks the
#                                                  # script's logic end to end, measures nothing worth keeping
#
# Steps (each one's output is kept in $WORK/<step>.log; the summary block at the end collects the ratios):
#   1 eval-fp32-*/eval-amp-* `silc-eval run` on the embedded suite with a zoo model, feature cache off, in fp32
#                            and with `amp: true` in every benchmark (fp16 autocast, the tasks' AMP path), run
#                            in the order fp32, amp, amp, fp32
#   2 eval-torchrun          the fp32 run under `torchrun --nproc_per_node=<GPUs present>` (NCCL; gloo with DEVICE=cpu)
#   3 train-step-fp32/-bf16  benchmarks/perf/train_throughput.py: clip loop step vs plain open_clip, and the silc
#                            step's cost relative to clip, without and with --amp (bf16 autocast)
#   4 train-silc             `silc-eval train --recipe silc` for a few steps under torchrun, --amp (bf16)
#   5 zeroshot-vitb16        benchmarks/perf/zeroshot_throughput.py on a randomly initialised ViT-B/16 checkpoint
#                            (open_clip.create_model(ARCH) after torch.manual_seed(0), saved with torch.save)
#   6 segmentation-vitb16    benchmarks/perf/segmentation_throughput.py, same checkpoint, VOC-sized images
#
# Environment: DEVICE (cuda | cpu), PYTHON (default .venv/bin/python), MODEL (zoo model, default
# clip-vit-tiny-synth), SUITE (of steps 1-2; default all, quick with DEVICE=cpu), ARCH (default ViT-B-16;
# with DEVICE=cpu step 5 uses MODEL instead), KEEP=1 keeps $WORK.
# Everything is written under a temporary folder ($WORK), including $SILC_EVAL_CACHE: SynthScenes parts
# already in your cache are linked (read only), missing ones are generated there before any timing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-clip-vit-tiny-synth}

case "$DEVICE" in
  cuda)
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      echo "gpu.sh: no CUDA device (torch.cuda.is_available() is false); nothing run (DEVICE=cpu checks the script)" >&2
      exit 2
    fi
    NPROC=$(nvidia-smi -L | wc -l)
    ARCH=${ARCH:-ViT-B-16}
    ZS_MODEL=ARCH  # the ViT checkpoint written below
    EVAL_SELECT=(--suite "${SUITE:-all}")
    TRAIN_STEP_ARGS=(--synthetic --batch-size 256 --steps 20 --repeats 5)
    N_TRAIN=5120
    TRAINER_ARGS=(--steps 40 --n-train "$N_TRAIN" --batch-size 128)
    ZS_ARGS=(--repeats 5)
    SEG_ARGS=(--n-images 32 --batch-size 32 --repeats 3)
    ;;
  cpu)
    NPROC=2
    ARCH=${ARCH:-ViT-B-16}
    ZS_MODEL=$MODEL  # a ViT-B/16 over the 1,000 images takes too long on a CPU
    EVAL_SELECT=(--suite "${SUITE:-quick}")
    TRAIN_STEP_ARGS=(--synthetic --batch-size 8 --steps 2 --repeats 2)
    N_TRAIN=64
    TRAINER_ARGS=(--steps 2 --n-train "$N_TRAIN" --batch-size 8)
    ZS_ARGS=(--repeats 1)
    SEG_ARGS=(--n-images 2 --batch-size 8 --repeats 1)
    ;;
  *)
    echo "gpu.sh: DEVICE must be cuda or cpu, not '$DEVICE'" >&2
    exit 2
    ;;
esac

WORK=$(mktemp -d -t silc-gpu-XXXXXX)
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$WORK"' EXIT; fi
REAL_CACHE=${SILC_EVAL_CACHE:-$HOME/.cache/silc_eval}
export SILC_EVAL_CACHE="$WORK/cache" SILC_EVAL_FEATURE_CACHE=off TQDM_DISABLE=1
TIMES="$WORK/times.txt"
: > "$TIMES"

# Run "$@" as step $1, its output shown and kept in $WORK/$1.log; record its wall seconds in $TIMES.
step() {
  local name=$1 start end
  shift
  echo
  echo "=== $name: $*"
  start=$(date +%s.%N)
  "$@" 2>&1 | tee "$WORK/$name.log"
  end=$(date +%s.%N)
  echo "$name $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')" >> "$TIMES"
}

# Print the wall seconds recorded for step $1.
seconds() { awk -v n="$1" '$1 == n { print $2 }' "$TIMES"; }

# Print $1 / $2 with 3 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# Print the lines of step $1's log matching the extended regex $2, indented (nothing if none).
lines() { grep -E "$2" "$WORK/$1.log" | sed 's/^ */    /' || true; }

# Link the SynthScenes parts of the real cache into the temporary one, part by part (never written to).
link_synthscenes() {
  local root part
  for root in "$REAL_CACHE"/synthscenes-*/; do
    [[ -d "$root/synthscenes" ]] || continue
    mkdir -p "$SILC_EVAL_CACHE/$(basename "$root")/synthscenes"
    for part in "$root"synthscenes/*; do
      if [[ -e "$part" ]]; then ln -s "$(realpath "$part")" "$SILC_EVAL_CACHE/$(basename "$root")/synthscenes/"; fi
    done
  done
}

echo "gpu.sh: DEVICE=$DEVICE, $NPROC process(es) for torchrun, model $MODEL, arch $ARCH; work folder $WORK"
"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda",
                              torch.cuda.is_available() and torch.cuda.get_device_name(0))'

# --- preparation (not timed): data, benchmark definitions with amp: true, the ViT checkpoints
link_synthscenes
"$PY" - "$N_TRAIN" <<'EOF'
import sys
from silc_eval.producers.synthscenes import SynthScenesConfig, default_workers, ensure_synthscenes
ensure_synthscenes(None, progress=False, workers=default_workers())
ensure_synthscenes(None, parts=("train",), config=SynthScenesConfig(n_train=int(sys.argv[1])), progress=False,
                   workers=default_workers())
EOF
cp -r benchmarks "$WORK/benchmarks-amp"
"$PY" - "$WORK/benchmarks-amp" <<'EOF'
import sys
from pathlib import Path
import yaml
from silc_eval.tasks import TASKS
for path in sorted(Path(sys.argv[1], "definitions").glob("synthscenes-*.yaml")):
    definition = yaml.safe_load(path.read_text())
    if "amp" in TASKS[definition["task"]].params:
        definition["params"] = {**(definition.get("params") or {}), "amp": True}
        path.write_text(yaml.safe_dump(definition, sort_keys=False))
EOF
"$PY" -c '
import sys, torch, open_clip
torch.manual_seed(0)
torch.save(open_clip.create_model(sys.argv[1]).state_dict(), sys.argv[2])' "$ARCH" "$WORK/$ARCH.pt"
if [[ "$ZS_MODEL" == ARCH ]]; then ZS_MODEL="$ARCH:$WORK/$ARCH.pt"; fi

# --- 1, 2: evaluation in fp32 and with fp16 autocast (in the order fp32, amp, amp, fp32, so that drift and
#     first-run costs fall on both alike), then under torchrun
RUN=(-m silc_eval run "${EVAL_SELECT[@]}" --model "$MODEL" --device "$DEVICE" --no-progress --no-feature-cache)
step eval-fp32-1 "$PY" "${RUN[@]}" --output "$WORK/eval-fp32"
step eval-amp-1 env SILC_EVAL_BENCHMARKS="$WORK/benchmarks-amp" "$PY" "${RUN[@]}" --output "$WORK/eval-amp"
step eval-amp-2 env SILC_EVAL_BENCHMARKS="$WORK/benchmarks-amp" "$PY" "${RUN[@]}" --output "$WORK/eval-amp-2"
step eval-fp32-2 "$PY" "${RUN[@]}" --output "$WORK/eval-fp32-2"
step eval-torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
  "${RUN[@]}" --output "$WORK/eval-torchrun"
"$PY" -m silc_eval compare "$WORK/eval-fp32" "$WORK/eval-amp" > "$WORK/compare-amp.log" 2>&1 || true
"$PY" -m silc_eval compare "$WORK/eval-fp32" "$WORK/eval-torchrun" > "$WORK/compare-torchrun.log" 2>&1 || true

# --- 3, 4: training
step train-step-fp32 "$PY" benchmarks/perf/train_throughput.py --recipe clip --recipes silc --device "$DEVICE" \
  "${TRAIN_STEP_ARGS[@]}"
step train-step-bf16 "$PY" benchmarks/perf/train_throughput.py --recipe clip --recipes silc --device "$DEVICE" --amp \
  "${TRAIN_STEP_ARGS[@]}"
step train-silc "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m silc_eval train \
  --recipe silc "${TRAINER_ARGS[@]}" --device "$DEVICE" --amp --no-eval --output "$WORK/train-silc"

# --- 5, 6: ViT throughput against the bare forward
step zeroshot-vitb16 "$PY" benchmarks/perf/zeroshot_throughput.py --model "$ZS_MODEL" \
  --device "$DEVICE" --suites '' "${ZS_ARGS[@]}"
step segmentation-vitb16 "$PY" benchmarks/perf/segmentation_throughput.py --model "$ARCH:$WORK/$ARCH.pt" \
  --synthetic 375x500 --short-side 336 --window 224 --stride 112 --device "$DEVICE" "${SEG_ARGS[@]}"

# --- summary
fp32=$(awk '$1 ~ /^eval-fp32-/ { s += $2 } END { printf "%.1f", s / 2 }' "$TIMES")
amp=$(awk '$1 ~ /^eval-amp-/ { s += $2 } END { printf "%.1f", s / 2 }' "$TIMES")
echo
echo "=================================== summary (DEVICE=$DEVICE) ==================================="
if [[ "$DEVICE" == cpu ]]; then
  echo "CPU variant with tiny sizes: this checks the script, it measures nothing worth keeping"
fi
echo "evaluation (${EVAL_SELECT[*]}, $MODEL, feature cache off; wall time of each process, mean of 2):"
echo "  fp32 $fp32 s | fp16 autocast $amp s -> amp/fp32 $(ratio "$amp" "$fp32")"
echo "  torchrun x$NPROC $(seconds eval-torchrun) s -> torchrun/one process $(ratio "$(seconds eval-torchrun)" "$fp32")"
if [[ "$NPROC" == 1 ]]; then
  echo "  (one GPU: torchrun runs one process, WORLD_SIZE=1, so no NCCL process group is made)"
fi
echo "  metrics, amp minus fp32 (silc-eval compare, in percentage points):"
grep -v ' minus ' "$WORK/compare-amp.log" | sed 's/^/    /' || true
echo "  metrics, torchrun minus one process:"
grep -v ' minus ' "$WORK/compare-torchrun.log" | sed 's/^/    /' || true
echo "training step (train_throughput.py, ${TRAIN_STEP_ARGS[*]}):"
echo "  fp32:"; lines train-step-fp32 '\(a\) / \(b\)|^ +(clip|silc) '
echo "  bf16:"; lines train-step-bf16 '\(a\) / \(b\)|^ +(clip|silc) '
echo "silc-eval train --recipe silc ${TRAINER_ARGS[*]} --amp, torchrun x$NPROC:"
echo "  $(seconds train-silc) s wall (start-up and the trainer's last-step evaluation included)"
echo "zero-shot classification, $ZS_MODEL, synthscenes-zeroshot:"
lines zeroshot-vitb16 'ours / |\((a|b|c)\) '
echo "sliding windows, $ARCH (random init), 375x500 images, short side 336, window 224, stride 112:"
lines segmentation-vitb16 '^\((a|b|c)\)|^\(a\)/|identical|^metric'
echo "wall seconds per step:"; sed 's/^/  /' "$TIMES"
