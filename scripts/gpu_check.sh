#!/usr/bin/env bash
# The GPU check in one call (docs/BENCHMARKS.md, "GPU check"): pytest tests/gpu, then scripts/bench_gpu.py
# (raw diffusers vs the engine on the full-size SD1.5 and SDXL architectures with random weights, fp16,
# and the compiled variant), results under "${OUT:-out/gpu_check}". Ends within 8 minutes on one H100.
#
#   scripts/gpu_check.sh              # on the GPU machine: CUDA, full-size models
#   scripts/gpu_check.sh --tiny       # tiny configs of the same architectures on CPU (the same steps, ~1 min)
#   scripts/gpu_check.sh --dry-run    # check the environment and print the commands; install and run nothing
#
# Here, before copying the repo to the GPU machine (which has no network): scripts/gpu_wheels.sh (the
# wheels it lacks, into .whl/) and `make protos` (the generated stubs, ignored by git). Copy the working
# tree with those two ignored folders (.whl and shared/multipass/v1), then, from the repo root there, with
# a 9-minute limit:
#
#   scripts/gpu_check.sh
#
# It needs no venv: the repo's packages are imported through PYTHONPATH (a folder of links named as
# setup.py's PACKAGE_ROOTS maps them), the wheels of .whl/ are installed into GPU_CHECK_SITE (default
# /tmp/site) unless every one of them is importable at its version already (then nothing is installed).
#
# Exit status: non-zero when the tests fail (or time out) or the bench's JSON line is missing; targets
# that are not met are reported (bench_gpu.json "targets", the summary at the end), not an error.
#
# Environment (defaults: GPU run / --tiny run):
#   PYTHON                      python3 (the CPU run here may use PYTHON=.venv/bin/python)
#   OUT                         out/gpu_check: gpu_check.log, environment.json, pytest.xml,
#                               bench_gpu.json (the JSON line), bench_gpu.partial.json (progress)
#   GPU_CHECK_STEPS             20 / 2    denoising steps of a base pass (person 10, hires 8 at 20)
#   GPU_CHECK_REPETITIONS       2 / 1     timed repetitions of each side of a comparison, after a warm-up
#   GPU_CHECK_TOTAL_S           480       the whole check's deadline (8 minutes)
#   GPU_CHECK_TEST_TIMEOUT_S    150       pytest tests/gpu's limit
#   GPU_CHECK_COMPILE_RESERVE_S 170 / 0   seconds kept for the compiled SD1.5 variant: the bench's
#                                         --budget-s is its time left minus this (eager stages that would
#                                         start later skip); its --deadline-s is its time left minus 5 s
#                                         (a part of the compiled variant starts only with 60 s left)
#   GPU_CHECK_SITE              /tmp/site
#   GPU_CHECK_WHEELS            .whl (the folder of wheels to install from)
#   GPU_CHECK_MODELS            .multipass/bench-gpu (the random-weight models, built once: ~9 GB)
set -uo pipefail

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

TINY=0
DRY=0
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg" >&2; usage >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-out/gpu_check}"
mkdir -p "$OUT_DIR" || exit 1
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-480}"
TEST_TIMEOUT_S="${GPU_CHECK_TEST_TIMEOUT_S:-150}"
if [[ $TINY == 1 ]]; then
  STEPS="${GPU_CHECK_STEPS:-2}"
  REPETITIONS="${GPU_CHECK_REPETITIONS:-1}"
  RESERVE_S="${GPU_CHECK_COMPILE_RESERVE_S:-0}"
  BENCH_MODE=(--tiny --device cpu)
else
  STEPS="${GPU_CHECK_STEPS:-20}"
  REPETITIONS="${GPU_CHECK_REPETITIONS:-2}"
  RESERVE_S="${GPU_CHECK_COMPILE_RESERVE_S:-170}"
  BENCH_MODE=(--device cuda)
fi
MODELS="${GPU_CHECK_MODELS:-$ROOT/.multipass/bench-gpu}"

say() { printf '[gpu_check %4ds] %s\n' "$SECONDS" "$*"; }

# The folder of links that makes the repo's packages importable by name (setup.py's PACKAGE_ROOTS).
link_sources() {
  local src="$1"
  mkdir -p "$src" || return 1
  "$PYTHON" - "$ROOT" "$src" <<'EOF' || return 1
import ast, os, sys
root, src = sys.argv[1], sys.argv[2]
tree = ast.parse(open(os.path.join(root, "setup.py")).read())
roots = next(
    ast.literal_eval(node.value)
    for node in tree.body
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PACKAGE_ROOTS" for t in node.targets)
)
for name, path in roots.items():
    target, link = os.path.join(root, path), os.path.join(src, name)
    if os.path.isdir(target):
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(target, link)
        print(f"{name} -> {path}")
EOF
}

# Wheels of .whl/ that are not importable at their version on PYTHONPATH (one "name==version" a line).
missing_wheels() {
  "$PYTHON" - "$WHEELS"/*.whl <<'EOF'
import os, re, sys
from importlib import metadata
for path in sys.argv[1:]:
    name, version = os.path.basename(path).split("-")[:2]
    try:
        found = metadata.version(name)
    except metadata.PackageNotFoundError:
        found = None
    if found is None or re.sub(r"[-_.]+", "-", found) != re.sub(r"[-_.]+", "-", version):
        print(f"{name}=={version} (found {found})")
EOF
}

main() {
  say "mode: $([[ $TINY == 1 ]] && echo 'tiny configs on CPU' || echo 'CUDA, full-size models'); steps $STEPS, repetitions $REPETITIONS; results in $OUT_DIR"
  local src="${TMPDIR:-/tmp}/multipass-gpu-check-src"
  if ! link_sources "$src" >"$OUT_DIR/.links" 2>&1; then
    cat "$OUT_DIR/.links"; say "FAILED: could not link the source folders (is $PYTHON a Python?)"; return 1
  fi
  say "sources: $(tr '\n' ' ' <"$OUT_DIR/.links")"
  rm -f "$OUT_DIR/.links"
  export PYTHONPATH="$SITE:$src${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

  # 1. Wheels: install .whl/ into $SITE unless every one is importable at its version already.
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl)
  if [[ ${#wheels[@]} -eq 0 ]]; then
    say "wheels: none in $WHEELS/ (nothing to install; run scripts/gpu_wheels.sh here and carry .whl)"
  else
    local missing
    missing="$(missing_wheels)"
    if [[ -z "$missing" ]]; then
      say "wheels: all ${#wheels[@]} of $WHEELS/ importable at their versions; nothing installed"
    elif [[ $DRY == 1 ]]; then
      say "wheels: would install ${#wheels[@]} wheels into $SITE; missing: $(tr '\n' ' ' <<<"$missing")"
    else
      say "wheels: installing ${#wheels[@]} into $SITE; missing: $(tr '\n' ' ' <<<"$missing")"
      "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || { say "FAILED: pip install"; return 1; }
      missing="$(missing_wheels)"
      if [[ -n "$missing" ]]; then say "FAILED: still not importable: $missing"; return 1; fi
    fi
  fi

  # 2. The generated protobuf stubs (ignored by git: carried, or made here with grpcio-tools).
  if ! "$PYTHON" -c "import multipass.v1.diffusion_pb2" 2>/dev/null; then
    if [[ $DRY == 1 ]]; then
      say "stubs: multipass.v1 not importable; would run grpc_tools.protoc"
    elif "$PYTHON" -c "import grpc_tools" 2>/dev/null; then
      say "stubs: generating shared/multipass/v1 with grpc_tools.protoc"
      rm -rf shared/multipass/v1
      "$PYTHON" -m grpc_tools.protoc -Iprotos --python_out=shared --pyi_out=shared \
        --grpc_python_out=shared protos/multipass/v1/*.proto || { say "FAILED: protoc"; return 1; }
      touch shared/multipass/v1/__init__.py
    fi
    if [[ $DRY == 0 ]] && ! "$PYTHON" -c "import multipass.v1.diffusion_pb2"; then
      say "FAILED: multipass.v1 is not importable: run \`make protos\` here and carry shared/multipass/v1"
      return 1
    fi
  fi

  # 3. What runs here: Python, torch, CUDA, the packages the engine uses.
  "$PYTHON" - "$OUT_DIR/environment.json" <<'EOF' || { say "FAILED: the environment check"; return 1; }
import json, platform, sys
from importlib import metadata
info = {"python": platform.python_version(), "executable": sys.executable, "packages": {}}
for name in ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "huggingface_hub",
             "tokenizers", "protobuf", "grpcio", "numpy", "pillow", "open_clip_torch", "nats-py", "minio"):
    try:
        info["packages"][name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        info["packages"][name] = None
import torch
info["cuda"] = torch.cuda.is_available()
if info["cuda"]:
    info["device"] = torch.cuda.get_device_name(0)
    info["cuda_version"] = torch.version.cuda
    info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
try:
    import multipass_bench.gpu, multipass_diffusion.engine  # noqa: F401  (everything imports)
    info["imports"] = "ok"
except Exception as error:  # reported, then the check fails below
    info["imports"] = f"{type(error).__name__}: {error}"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info))
sys.exit(0 if info["imports"] == "ok" else 1)
EOF
  if [[ $TINY == 0 ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "FAILED: no CUDA device (on CPU run scripts/gpu_check.sh --tiny)"
    return 1
  fi

  local test_cmd=("$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu --junitxml="$OUT_DIR/pytest.xml")
  local bench_cmd=("$PYTHON" scripts/bench_gpu.py "${BENCH_MODE[@]}" --steps "$STEPS" --repetitions "$REPETITIONS"
    --compile-families sd15 --dir "$MODELS" --json-out "$OUT_DIR/bench_gpu.partial.json")
  if [[ $DRY == 1 ]]; then
    say "would run: timeout $TEST_TIMEOUT_S ${test_cmd[*]}"
    say "would run: timeout <what is left of ${TOTAL_S} s> ${bench_cmd[*]} --budget-s <that minus $RESERVE_S s> --deadline-s <that minus 5 s>"
    say "dry run: ok"
    return 0
  fi

  # 4. The CUDA tests (on CPU they skip).
  say "tests: ${test_cmd[*]}"
  timeout -k 10 "$TEST_TIMEOUT_S" "${test_cmd[@]}"
  local tests_rc=$?
  say "tests: exit $tests_rc$([[ $tests_rc == 124 ]] && echo ' (timed out)')"

  # 5. The bench, in what is left of the deadline; stages that would start past --budget-s are skipped.
  local left=$((TOTAL_S - SECONDS - 10))
  ((left < 60)) && left=60
  local budget=$((left - RESERVE_S))
  ((budget < 30)) && budget=30
  rm -f "$OUT_DIR/bench_gpu.json" "$OUT_DIR/bench_gpu.partial.json"
  say "bench: timeout $left ${bench_cmd[*]} --budget-s $budget --deadline-s $((left - 5))"
  timeout -k 10 "$left" "${bench_cmd[@]}" --budget-s "$budget" --deadline-s "$((left - 5))" \
    >"$OUT_DIR/bench_gpu.stdout"
  local bench_rc=$?
  say "bench: exit $bench_rc$([[ $bench_rc == 124 ]] && echo ' (timed out)')"
  "$PYTHON" - "$OUT_DIR" <<'EOF'
import json, os, sys
out = sys.argv[1]
lines = [l for l in open(os.path.join(out, "bench_gpu.stdout")).read().splitlines() if l.strip()]
os.remove(os.path.join(out, "bench_gpu.stdout"))
try:
    result = json.loads(lines[-1])
    assert result.get("complete") is True and result.get("families")
except (IndexError, ValueError, AssertionError):
    print("bench: no complete JSON line; the progress so far is in bench_gpu.partial.json")
    sys.exit(1)
open(os.path.join(out, "bench_gpu.json"), "w").write(lines[-1] + "\n")
print(lines[-1])
print("summary (it/s raw -> engine, engine/raw):")
for family, figures in result["families"].items():
    for kind, p in figures.get("passes", {}).items():
        text = p if isinstance(p, str) else f"{p['raw_its']:.2f} -> {p['engine_its']:.2f}  x{p['engine_vs_raw']:.3f}"
        print(f"  {family:5} {kind:7} {text}")
    compiled = figures.get("compiled")
    if isinstance(compiled, dict):
        print(f"  {family:5} compiled base {compiled['engine_its']:.2f} it/s, x{compiled.get('vs_raw_eager')} raw eager")
    print(f"  {family:5} LoRA switch {figures.get('lora_switch_ms')} ms ({figures.get('lora_switch_fraction')} of a person pass); "
          f"job {figures['two_person_job'].get('cold_seconds') if isinstance(figures['two_person_job'], dict) else figures['two_person_job']}")
for key, entry in result["targets"].items():
    print(f"  target {key} {entry['target']}: met={entry['met']} {entry['values']}")
print(f"targets_met={result['targets_met']} elapsed={result['elapsed_seconds']} s")
EOF
  local json_rc=$?
  if [[ $tests_rc != 0 ]]; then say "FAILED: tests/gpu (exit $tests_rc)"; return 1; fi
  if [[ $json_rc != 0 ]]; then say "FAILED: the bench's JSON is missing (bench exit $bench_rc)"; return 1; fi
  say "ok: results in $OUT_DIR"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
