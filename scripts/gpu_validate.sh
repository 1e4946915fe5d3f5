#!/usr/bin/env bash
# The one command for the first GPU machine: everything only a GPU can show, in under 10 minutes on one GPU.
#
#   scripts/gpu_validate.sh [--out DIR] [--frames N] [--quick]
#
# Steps (each one line in the table; a step that cannot run here says why in one line and is "skipped"):
#   environment      GPU, driver, CUDA, cuda-python, TensorRT, PyTorch (rtmw-edge doctor --json)
#   emulated         the emulated-asynchrony suite on the CPU (tests/test_emulated_cuda.py, test_cuda_async.py)
#   gpu-tests        pytest -m gpu: kernels vs their numpy twins on the GPU, the pipeline vs the CPU pipeline,
#                    host-sync spying, two-slot overlap, interop, and the asynchrony scenarios on the real runtime
#                    (tests/test_cuda_gpu_async.py: varying person counts, producer streams, rotating buffers,
#                    two cameras at once, early exits)
#   memcheck, racecheck, synccheck
#                    compute-sanitizer over the kernel tests on the GPU (tests/test_cuda_kernel_twins.py -m gpu)
#   bench-*          scripts/bench_gpu.py on the torch path (and TensorRT when it is installed: with and without
#                    CUDA graphs), profiled per stage with CUDA events
# Results: DIR/gpu-validation.json and DIR/gpu-validation.md (default DIR: gpu-validation-<date>); exit 0 when
# nothing failed (skips are not failures), 1 otherwise. Without a GPU (CI) the GPU steps are refused, one line each.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="gpu-validation-$(date +%Y%m%d-%H%M%S)"
FRAMES=100
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --frames) FRAMES="$2"; shift 2 ;;
    --quick) QUICK=1; FRAMES=20; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$FRAMES" in ''|*[!0-9]*) echo "error: --frames must be a whole number, not $FRAMES" >&2; exit 2 ;; esac
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
PY="${PYTHON:-python3}"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

step() {  # step NAME STATUS SECONDS DETAIL
  "$PY" -c 'import json,sys; print(json.dumps({"step":sys.argv[1],"status":sys.argv[2],"seconds":float(sys.argv[3]),"detail":sys.argv[4]}))' \
    "$1" "$2" "$3" "$4" >> "$STEPS"
  printf '%-12s %-8s %6ss  %s\n' "$1" "$2" "$3" "$4"
}

run_step() {  # run_step NAME LOG COMMAND... : passed on exit 0, failed otherwise; the log's last line as detail
  local name="$1" log="$OUT/$2"; shift 2
  local start=$SECONDS
  "$@" > "$log" 2>&1
  local rc=$?
  local detail
  detail=$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)
  step "$name" "$([ $rc -eq 0 ] && echo passed || echo failed)" "$((SECONDS - start))" "$detail"
}

# ------------------------------------------------------------------------------------ what this machine has
"$PY" -m rtmw_edge.cli doctor --json > "$OUT/environment.json" 2> "$OUT/environment.log" \
  || "$PY" - > "$OUT/environment.json" <<'EOF'
import json, platform
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "doctor": "failed"}))
EOF
GPU_WHY=$("$PY" - <<'EOF'
from rtmw_edge.errors import RtmwEdgeError
try:
    from rtmw_edge.cuda import runtime as R
    ok, why = R.device_available(0)
except RtmwEdgeError as exc:
    ok, why = False, str(exc)
print(("GPU " if ok else "NOGPU ") + why.replace("\n", " "))
EOF
)
HAVE_GPU=0; [ "${GPU_WHY%% *}" = "GPU" ] && HAVE_GPU=1
step environment "$([ $HAVE_GPU -eq 1 ] && echo passed || echo skipped)" 0 "${GPU_WHY#* }"
HAVE_TORCH_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
HAVE_TRT=$("$PY" -c 'import tensorrt' >/dev/null 2>&1 && echo 1 || echo 0)
SANITIZER=$(command -v compute-sanitizer)
[ -z "$SANITIZER" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer

# ------------------------------------------------------------------------------------ steps
EMULATED=(tests/test_emulated_cuda.py)
[ $QUICK -eq 1 ] || EMULATED+=(tests/test_cuda_async.py)
run_step emulated emulated.log "$PY" -m pytest -q -p no:cacheprovider "${EMULATED[@]}"

if [ $HAVE_GPU -eq 1 ]; then
  RTMW_EDGE_GPU_REPORT="$OUT/gpu-report.json" run_step gpu-tests gpu-tests.log "$PY" -m pytest -m gpu -q -rs \
    -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" tests/test_cuda_kernel_twins.py tests/test_cuda_edge_inputs.py \
    tests/test_cuda_gpu.py tests/test_cuda_gpu_async.py
else
  step gpu-tests skipped 0 "no CUDA GPU: ${GPU_WHY#* }"
fi

for tool in memcheck racecheck synccheck; do
  if [ $HAVE_GPU -eq 0 ]; then
    step "$tool" skipped 0 "no CUDA GPU"
  elif [ -z "$SANITIZER" ]; then
    step "$tool" skipped 0 "compute-sanitizer not found (CUDA toolkit bin/ on PATH)"
  else
    run_step "$tool" "sanitizer-$tool.log" "$SANITIZER" --tool "$tool" --error-exitcode 9 --target-processes all \
      "$PY" -m pytest -m gpu -q -x -p no:cacheprovider tests/test_cuda_kernel_twins.py
  fi
done

bench() {  # bench NAME ARGS...
  local name="$1"; shift
  if [ $HAVE_GPU -eq 0 ]; then step "$name" skipped 0 "no CUDA GPU"; return; fi
  run_step "$name" "$name.log" "$PY" scripts/bench_gpu.py --frames "$FRAMES" --json "$OUT/$name.json" "$@"
}
if [ "$HAVE_TORCH_CUDA" = "1" ]; then
  bench bench-torch --backend torch-cuda
else
  step bench-torch skipped 0 "PyTorch without CUDA here (the torch path needs a CUDA build of torch)"
fi
if [ "$HAVE_TRT" = "1" ] && [ $HAVE_GPU -eq 1 ]; then
  ENG="$OUT/engines"; mkdir -p "$ENG"
  if "$PY" -m rtmw_edge.cli export rtmw-m-256x192 --random-init -o "$ENG/rtmw-m.onnx" > "$OUT/build.log" 2>&1 \
     && "$PY" -m rtmw_edge.cli build ../shared/models/rtmdet-nano_person_320_rawhead.onnx -o "$ENG/det.engine" >> "$OUT/build.log" 2>&1 \
     && "$PY" -m rtmw_edge.cli build "$ENG/rtmw-m.onnx" -o "$ENG/rtmw-m.engine" >> "$OUT/build.log" 2>&1; then
    bench bench-trt --backend tensorrt --det "$ENG/det.engine" --pose "$ENG/rtmw-m.engine"
    bench bench-trt-graphs --backend tensorrt --det "$ENG/det.engine" --pose "$ENG/rtmw-m.engine" --cuda-graphs
  else
    step bench-trt failed 0 "engine build failed: $(tail -1 "$OUT/build.log" | cut -c1-160)"
  fi
else
  step bench-trt skipped 0 "TensorRT not installed here (the torch path stands in)"
fi

# ------------------------------------------------------------------------------------ one JSON, one table
"$PY" - "$OUT" <<'EOF'
import datetime, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
env = {}
try:
    env = json.loads((out / "environment.json").read_text() or "{}")
except ValueError:
    pass
benches = {p.stem: json.loads(p.read_text()) for p in out.glob("bench-*.json")}
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "environment": env,
          "steps": steps, "benchmarks": benches}
gpu = out / "gpu-report.json"
if gpu.is_file():
    report["gpu_tests"] = json.loads(gpu.read_text())
(out / "gpu-validation.json").write_text(json.dumps(report, indent=2, default=str))
gpus = ", ".join(g.get("name", "?") for g in env.get("gpus", [])) or "no GPU"
lines = [f"# GPU validation, {report['date']}", "", f"device: {gpus}; driver {env.get('driver')}; CUDA driver "
         f"{env.get('cuda_driver')}; cuda-python {env.get('cuda_python')}; TensorRT {env.get('tensorrt')}", "",
         "| step | status | seconds | detail |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s['detail'].replace('|', '/')} |" for s in steps]
for name, b in benches.items():
    fps = ", ".join(f"{k} {v:.1f}" for k, v in b.items() if k.endswith("FPS") and isinstance(v, (int, float)))
    lines += ["", f"**{name}**: {fps}"]
(out / "gpu-validation.md").write_text("\n".join(lines) + "\n")
failed = [s["step"] for s in steps if s["status"] == "failed"]
print(f"gpu-validation: {len(steps)} steps, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
      f"{out / 'gpu-validation.md'}")
sys.exit(1 if failed else 0)
EOF
