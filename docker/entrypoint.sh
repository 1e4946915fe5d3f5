#!/usr/bin/env bash
# rtmw-edge container entrypoint: build the TensorRT engines that are missing or stale, then serve.
#
#   (no arguments) | serve [SERVE OPTIONS...]
#       1. pick the daemon configuration (below) and validate it (`rtmw-edge serve --check`);
#       2. for every model ONNX to deploy, run `rtmw-edge build MODEL.onnx -o ENGINES/NAME.engine --check`:
#          exit 0 = the engine matches (ONNX hash, TensorRT version, GPU, options): nothing to do;
#          exit 3 = missing or stale: build it now (minutes on a Jetson; once per device and update);
#          anything else stops the container with the builder's message and a non-zero exit;
#       3. exec `rtmw-edge serve` (it becomes PID 1's process: SIGTERM reaches the daemon directly).
#   any other command is run as given (`docker run IMAGE rtmw-edge doctor`, `... bash`).
#
# Environment (defaults in brackets):
#   RTMW_EDGE_CONFIG       daemon TOML file [unset: $RTMW_EDGE_CONFIG_DIR/daemon.toml when that file
#                          exists, else no file: the daemon's defaults plus RTMW_EDGE_* variables].
#                          Set explicitly, the file must exist.
#   RTMW_EDGE_CONFIG_DIR   configuration volume [/config]
#   RTMW_EDGE_MODELS_DIR   folder of ONNX files (from `rtmw-edge export`) [/models]
#   RTMW_EDGE_ENGINES_DIR  where engines (+ manifests, timing cache) are written [/engines]
#   RTMW_EDGE_BUILD        which ONNX get engines [all]:
#                            all    every *.onnx in RTMW_EDGE_MODELS_DIR, plus the daemon's own models;
#                            config only the daemon's detector and pose model;
#                            none   build nothing, serve the configuration as it is.
#   RTMW_EDGE_BUILD_ARGS   extra `rtmw-edge build` options, split on spaces, given to the check and to
#                          the build alike (they are part of the engine's cache key) [""],
#                          e.g. "--workspace 1GiB" or "--batch 1:4:8".
#
# The daemon's models (model.det / model.pose of the configuration, or RTMW_EDGE_MODEL_DET/_POSE):
#   an .onnx path               → built to ENGINES/<stem>.engine, and the daemon is started on that engine;
#   a registered name (rtmw-…)  → ENGINES/<name>.engine built from MODELS/<name>.onnx when that file exists
#                                 (export it on a desktop: rtmw-edge export NAME -o models/NAME.onnx);
#   an .engine path             → used as it is (MODELS/<stem>.onnx, if any, is built there under "all").
# With model.backend = "onnxruntime" the daemon's models are left alone (no engines for them).
set -euo pipefail

PROG=rtmw-edge-entrypoint
CONFIG_DIR=${RTMW_EDGE_CONFIG_DIR:-/config}
MODELS_DIR=${RTMW_EDGE_MODELS_DIR:-/models}
ENGINES_DIR=${RTMW_EDGE_ENGINES_DIR:-/engines}
BUILD_MODE=${RTMW_EDGE_BUILD:-all}
read -r -a BUILD_ARGS <<< "${RTMW_EDGE_BUILD_ARGS:-}"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ---------------------------------------------------------------- signals while we are still PID 1
# A foreground child would delay bash's traps until it ends (an engine build: minutes), so children
# run in the background and we wait. On SIGTERM/SIGINT the child gets SIGTERM (background children of a
# script ignore SIGINT) and the entrypoint exits 128+N. (The builder writes engines atomically.)
child=""
on_signal() {
    local sig=$1
    log "received SIG$sig during startup: stopping"
    if [[ -n "$child" ]]; then
        kill -s TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    exit $((128 + $(kill -l "$sig")))
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

run() {
    "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

# ---------------------------------------------------------------- arguments
if [[ $# -gt 0 && "$1" != "serve" ]]; then
    exec "$@"
fi
if [[ $# -gt 0 ]]; then
    shift # "serve"; the rest goes to `rtmw-edge serve`
fi

case "$BUILD_MODE" in
    all | config | none) ;;
    *) die "RTMW_EDGE_BUILD=$BUILD_MODE: expected all, config or none" ;;
esac
command -v rtmw-edge >/dev/null || die "rtmw-edge is not on PATH ($PATH)"

# ---------------------------------------------------------------- configuration
config_args=()
if [[ -n "${RTMW_EDGE_CONFIG:-}" ]]; then
    [[ -f "$RTMW_EDGE_CONFIG" ]] || die "RTMW_EDGE_CONFIG=$RTMW_EDGE_CONFIG: no such file (mount it, or unset the variable)"
    config_args=(--config "$RTMW_EDGE_CONFIG")
elif [[ -f "$CONFIG_DIR/daemon.toml" ]]; then
    export RTMW_EDGE_CONFIG="$CONFIG_DIR/daemon.toml"
    config_args=(--config "$RTMW_EDGE_CONFIG")
else
    unset RTMW_EDGE_CONFIG
    log "no $CONFIG_DIR/daemon.toml: using the daemon's defaults and the RTMW_EDGE_* environment variables"
fi
if [[ ${#config_args[@]} -gt 0 ]]; then
    log "configuration: ${config_args[1]}"
fi

settings=$(rtmw-edge serve "${config_args[@]}" --check) || die "the daemon configuration is invalid (message above)"
models_txt=$(printf '%s' "$settings" | python3 -c '
import json, sys
m = json.load(sys.stdin)["model"]
print(m["backend"]); print(m["det"]); print(m["pose"])
') || die "could not read model.backend/det/pose from the output of 'rtmw-edge serve --check'"
mapfile -t model <<< "$models_txt"
[[ ${#model[@]} -eq 3 ]] || die "could not read model.backend/det/pose from the output of 'rtmw-edge serve --check'"
backend=${model[0]}

# ---------------------------------------------------------------- what to build
declare -A engine_source=() # engine path -> ONNX path
engines=()                  # engine paths, in order

add_engine() { # ONNX ENGINE
    local onnx=$1 engine=$2 real
    [[ -f "$onnx" ]] || die "model file not found: $onnx"
    real=$(readlink -f -- "$onnx")
    if [[ -n "${engine_source[$engine]:-}" ]]; then
        [[ "${engine_source[$engine]}" == "$real" ]] ||
            die "$engine would be built from both ${engine_source[$engine]} and $real: rename one ONNX"
        return 0
    fi
    engine_source[$engine]=$real
    engines+=("$engine")
}

if [[ "$BUILD_MODE" != "none" && "$backend" != "onnxruntime" ]]; then
    for role in det pose; do
        if [[ "$role" == det ]]; then spec=${model[1]}; else spec=${model[2]}; fi
        onnx=""
        case "$spec" in
            *.onnx | *.ONNX) onnx=$spec ;;
            *.engine | *.plan | *.trt) ;;
            */*) ;; # some other file: the daemon reports it
            *)
                if [[ -f "$MODELS_DIR/$spec.onnx" ]]; then
                    onnx="$MODELS_DIR/$spec.onnx"
                else
                    log "WARNING: model.$role = $spec: no $MODELS_DIR/$spec.onnx to build an engine from; the daemon" \
                        "will resolve the name itself (an export needs PyTorch, which this image does not have)"
                fi
                ;;
        esac
        if [[ -n "$onnx" ]]; then
            name=$(basename -- "$onnx")
            engine="$ENGINES_DIR/${name%.*}.engine"
            add_engine "$onnx" "$engine"
            export "RTMW_EDGE_MODEL_${role^^}=$engine"
            log "model.$role: $spec -> $engine"
        fi
    done
fi
if [[ "$BUILD_MODE" == "all" ]]; then
    if [[ -d "$MODELS_DIR" ]]; then
        shopt -s nullglob
        for onnx in "$MODELS_DIR"/*.onnx; do
            name=$(basename -- "$onnx")
            add_engine "$onnx" "$ENGINES_DIR/${name%.onnx}.engine"
        done
        shopt -u nullglob
    else
        log "no models folder $MODELS_DIR: nothing to build from it"
    fi
fi

# ---------------------------------------------------------------- check, then build only what is stale
for engine in "${engines[@]}"; do
    onnx=${engine_source[$engine]}
    rc=0
    run rtmw-edge build "$onnx" -o "$engine" --check "${BUILD_ARGS[@]}" || rc=$?
    case "$rc" in
        0) log "engine up to date: $engine" ;;
        3)
            mkdir -p -- "$ENGINES_DIR" 2>/dev/null || true
            [[ -d "$ENGINES_DIR" && -w "$ENGINES_DIR" ]] ||
                die "$ENGINES_DIR is not writable by uid $(id -u) (gid $(id -g)): use a named volume, or chown the" \
                    "host folder to that uid"
            log "building $engine from $onnx (first start on this device, or the ONNX/TensorRT/options changed;" \
                "this takes minutes)"
            rc=0
            run rtmw-edge build "$onnx" -o "$engine" "${BUILD_ARGS[@]}" || rc=$?
            [[ "$rc" -eq 0 ]] || die "building $engine from $onnx failed (exit $rc); not serving"
            log "built $engine"
            ;;
        *) die "'rtmw-edge build $onnx -o $engine --check' failed with exit $rc (0 = up to date, 3 = stale);" \
            "not serving: fix the message above (rtmw-edge doctor lists what TensorRT/CUDA this container sees)" ;;
    esac
done

# ---------------------------------------------------------------- serve
trap - TERM INT
log "starting: rtmw-edge serve ${config_args[*]} $*"
exec rtmw-edge serve "${config_args[@]}" "$@"
