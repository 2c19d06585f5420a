#!/usr/bin/env bash
# One call for every GPU figure of the performance benchmark (issue 8 / issue 17.10), on a fresh CUDA machine:
#
#   bash benchmarks/gpu.sh [--wheels DIR] [--results FILE] [--budget SECONDS] [--python PY]
#   bash benchmarks/gpu.sh --dry-run [--results FILE] [--only NAME]   # CPU: tiny models, same steps
#
# 1. installs the packages the machine lacks from the wheels in DIR (pip --no-index: no network needed);
# 2. runs, each under its share of an overall budget (default 480 s = 8 minutes, install included):
#    - SD baseline vs diffusers' StableDiffusionPipeline, both compiled; harness overhead (bare loop vs
#      in-process vs Ray); model FLOPs and fraction of the measured matmul rate; metrics-stage share;
#    - AVI on the same model and settings (AVI/SD ratio from the two sections; the compile cache is warm);
#    - Park et al. per edited image (channel-mean scorer for the automatic direction choice: no CLIP weights
#      offline; the JVP/VJP iterations, the cost being measured, are the same);
#    - the DDPM-256 methods (hspace-pca, jacobian) per image;
# 3. appends one section per step to RESULTS (default benchmarks/RESULTS.md). A step that runs out of its
#    share writes "not measured (timed out after N s)" instead of a number, so the file never claims a figure
#    that was not measured.
# Exit status: 0 when every step ran, 1 when some step failed or timed out, 2 for a bad invocation.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
wheels="${GPU_WHEELS:-$here/wheels}"
results="$here/RESULTS.md"
budget=""
only=""
dry=0
py="${PYTHON:-python}"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels|--results|--budget|--python|--only)
      [ $# -ge 2 ] || { echo "gpu.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;
  esac
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --python) py="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
# 8 minutes on the GPU; the CPU dry run's tiny steps take minutes on a loaded 2-core machine, so it gets more.
[ -z "$budget" ] && { [ $dry -eq 1 ] && budget=1800 || budget=480; }

# Every argument is checked here, before anything is installed or written: a bad invocation exits 2 with one
# line and leaves RESULTS as it was (it used to get a section header before --only was checked).
# The figures (run in section 2).
# name|share of the budget left after install (percent)|bench.py arguments (GPU)|bench.py arguments (dry run)
steps=(
  "sd-vs-diffusers|40|--model arch-sd21-base --method sd --units 16 --batch-size 16 --steps 50 --compile --repeats 1|--model tiny-sd --method sd"
  "avi|20|--model arch-sd21-base --method avi --units 16 --batch-size 16 --steps 50 --compile --repeats 1 --metrics-images 0|--model tiny-sd --method avi --option samples_per_pair=2 --option epochs=1 --option batch_size=2 --metrics-images 0"
  "park|15|--model arch-sd21-base --method park --units 2 --batch-size 2 --steps 50 --repeats 1 --metrics-images 0 --option scorer.kind=channel-mean|--model tiny-sd --method park --option pca_rank=1 --option n_guidance=1 --option scorer.kind=channel-mean --option convergence.max_iters=2 --option convergence.min_iters=0 --metrics-images 0"
  "ddpm256-hspace-pca|15|--model arch-ddpm-256 --method hspace-pca --units 16 --batch-size 16 --steps 50 --compile --repeats 1 --option n_samples=32|--model tiny-unet --method hspace-pca --option n_samples=4 --option n_components=2 --option batch_size=4 --metrics-images 0"
  "ddpm256-jacobian|10|--model arch-ddpm-256 --method jacobian --units 2 --batch-size 2 --steps 50 --repeats 1 --metrics-images 0 --option k=1 --option convergence.max_iters=10|--model tiny-unet --method jacobian --option k=1 --option convergence.max_iters=2 --option convergence.patience=1 --metrics-images 0"
)
case "$budget" in ''|*[!0-9]*) echo "gpu.sh: --budget $budget: expected whole seconds" >&2; exit 2 ;; esac
known=" $(for step in "${steps[@]}"; do printf '%s ' "${step%%|*}"; done)"
if [ -n "$only" ] && [[ "$known" != *" $only "* ]]; then
  echo "gpu.sh: --only $only: no such step; choose one of:$known" >&2; exit 2
fi
if [ ! -d "$(dirname "$results")" ]; then
  echo "gpu.sh: --results $results: its folder does not exist" >&2; exit 2
fi
if ! "$py" -c "" 2>/dev/null; then
  echo "gpu.sh: --python $py: not a runnable Python" >&2; exit 2
fi

start=$(date +%s)
remaining() { echo $(( budget - ($(date +%s) - start) )); }
status=0

# -- 1. install what is missing -------------------------------------------------------------------------
# import name -> pip name; torch itself must already be a CUDA build on the machine.
missing=()
for pair in diffusers:diffusers transformers:transformers ray:ray pandas:pandas pyarrow:pyarrow yaml:pyyaml \
            safetensors:safetensors accelerate:accelerate; do
  mod="${pair%%:*}"; pkg="${pair#*:}"
  "$py" -c "import $mod" 2>/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ $dry -eq 1 ]; then
    echo "gpu.sh --dry-run: would install ${missing[*]} from $wheels"
  elif [ ! -d "$wheels" ]; then
    echo "gpu.sh: packages ${missing[*]} are missing and the wheel folder $wheels does not exist; pass --wheels DIR" >&2
    exit 2
  else
    timeout "$(remaining)" "$py" -m pip install --quiet --no-index --find-links "$wheels" "${missing[@]}" || {
      echo "gpu.sh: installing ${missing[*]} from $wheels failed; add their wheels (and dependencies) there" >&2; exit 2; }
  fi
fi
if [ $dry -eq 0 ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device; run it on the GPU machine, or use --dry-run on a CPU" >&2
  exit 2
fi

# -- 2. the figures ---------------------------------------------------------------------------------------
dry_common="--units 1 --batch-size 1 --steps 2 --repeats 1 --metrics-images 2 --no-ray"
after_install=$(remaining)
{
  echo
  echo "## One-call GPU benchmark (benchmarks/gpu.sh$([ $dry -eq 1 ] && echo ' --dry-run: CPU, tiny models; not GPU figures'))"
  echo
  echo "started $(date -u +%Y-%m-%dT%H:%M:%SZ); budget ${budget} s, ${after_install} s left after installing"
} >> "$results"
for step in "${steps[@]}"; do
  IFS='|' read -r name share gpu_args dry_args <<< "$step"
  [ -n "$only" ] && [ "$name" != "$only" ] && continue
  if [ $dry -eq 1 ]; then args="$dry_args $dry_common"; else args="$gpu_args"; fi
  limit=$(( after_install * share / 100 ))
  [ -n "$only" ] && limit=$after_install
  left=$(remaining)
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    printf '\n### %s: not measured (no budget left)\n' "$name" >> "$results"; status=1; continue
  fi
  echo "gpu.sh: $name (limit ${limit} s): bench.py $args"
  # shellcheck disable=SC2086  # args is a word list on purpose
  ( cd "$repo" && timeout "$limit" "$py" benchmarks/bench.py $args --write "$results" )
  rc=$?
  if [ $rc -ne 0 ]; then
    why="failed (exit $rc)"; [ $rc -eq 124 ] && why="timed out after ${limit} s"
    printf '\n### %s: not measured (%s)\n' "$name" "$why" >> "$results"
    status=1
  fi
done
echo "gpu.sh: done in $(( $(date +%s) - start )) s; results appended to $results"
exit $status
