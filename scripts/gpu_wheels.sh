#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the offline GPU machine lacks for scripts/gpu_check.sh
# (docs/BENCHMARKS.md, "GPU check"): cp312 manylinux x86_64 or pure-Python wheels, no dependencies
# resolved by pip (--no-deps), so every missing dependency is named below. Versions come from
# constraints.txt, so the GPU machine runs what the venv here runs.
#
#     scripts/gpu_wheels.sh            # download (idempotent: present wheels are kept, stale ones removed)
#     scripts/gpu_wheels.sh --list     # print NAME==VERSION of the set and exit (read by the unit test)
#
# The GPU machine has Python 3.12 with torch, transformers, accelerate, safetensors, onnxruntime, numpy,
# pillow, opencv-python-headless, grpcio, prometheus-client, huggingface-hub, pytest and their
# dependencies (docs/BENCHMARKS.md lists what was seen there); what is missing is what the diffusion
# engine, tests/gpu (with tests/conftest.py) and scripts/bench_gpu.py import, at import time or when
# they run. tests/unit/test_gpu_check_scripts.py checks this list against those imports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"

# One line per wheel: the name as constraints.txt spells it, and why it travels.
WHEELS=(
  diffusers             # the engine's pipelines
  importlib_metadata    # diffusers' requirement
  lazy-importer         # importlib_metadata's requirement
  peft                  # LoRA adapters (there, but maybe another version)
  torchsde              # imported by diffusers' scheduler package once installed; dpm++sde
  trampoline            # torchsde's requirement
  spandrel              # the upscale pass's networks (the engine imports it when one runs)
  open_clip_torch       # the CLIP BPE merges the tiny models and the bench derive their vocabulary from
  ftfy                  # open_clip's requirement
  wcwidth               # ftfy's requirement
  segment-anything      # multipass_dev.tiny_models (the tiny segmentation models; pure Python, small)
  protobuf              # the generated stubs need the runtime >= the protoc that made them (7.35)
  nats-py               # multipass.bus (tests/conftest.py imports it)
  minio                 # multipass.store (tests/conftest.py imports it)
  argon2-cffi           # minio's requirement
  argon2-cffi-bindings  # argon2-cffi's requirement
  cffi                  # argon2-cffi-bindings' requirement
  pycparser             # cffi's requirement
  pycryptodome          # minio's requirement
)

normalise() { tr 'A-Z_.' 'a-z--' <<<"$1"; }

pinned() {
  # NAME==VERSION as constraints.txt pins NAME (names compared as PEP 503 normalises them).
  local want line
  want="$(normalise "$1")"
  while IFS= read -r line; do
    [[ "$line" == *==* ]] || continue
    if [[ "$(normalise "${line%%==*}")" == "$want" ]]; then
      echo "$1==${line#*==}"
      return 0
    fi
  done <"$ROOT/constraints.txt"
  echo "gpu_wheels: $1 is not pinned in constraints.txt" >&2
  return 1
}

SPECS=()
for name in "${WHEELS[@]}"; do
  SPECS+=("$(pinned "$name")")
done

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${SPECS[@]}"
  exit 0
fi
if [[ $# -gt 0 ]]; then
  echo "usage: scripts/gpu_wheels.sh [--list]" >&2
  exit 2
fi

if [[ -z "${PIP:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PIP="$ROOT/.venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi
mkdir -p "$DEST"

# A wheel's file name starts NAME-VERSION- (PEP 427); NAME==VERSION normalised identifies it.
wheel_key() { local base; base="$(basename "$1")"; echo "$(normalise "${base%%-*}")==$(cut -d- -f2 <<<"$base")"; }
spec_key() { echo "$(normalise "${1%%==*}")==${1#*==}"; }
KEYS=()
for spec in "${SPECS[@]}"; do KEYS+=("$(spec_key "$spec")"); done

# Remove wheels that are not in the set (another version, or a name dropped from it): two versions of
# one package stop the whole install there.
shopt -s nullglob
for file in "$DEST"/*.whl; do
  key="$(wheel_key "$file")"
  if [[ " ${KEYS[*]} " != *" $key "* ]]; then
    echo "gpu_wheels: removing $(basename "$file") (not in the set)"
    rm -f "$file"
  fi
done

for spec in "${SPECS[@]}"; do
  $PIP download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "$spec" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
done

for spec in "${SPECS[@]}"; do
  found=()
  for file in "$DEST"/*.whl; do
    [[ "$(wheel_key "$file")" == "$(spec_key "$spec")" ]] && found+=("$file")
  done
  if [[ ${#found[@]} -ne 1 ]]; then
    echo "gpu_wheels: expected one wheel for $spec in .whl/, found ${#found[@]}" >&2
    exit 1
  fi
  printf '%8d KiB  %s\n' "$(($(stat -c %s "${found[0]}") / 1024))" "$(basename "${found[0]}")"
done
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
printf 'gpu_wheels: %d wheels, %.1f MiB in all in .whl/\n' "${#SPECS[@]}" "$(awk "BEGIN{print $total/1048576}")"
