#!/usr/bin/env bash
# Bare-metal install of rtmw-edge on a Jetson (JetPack 6 / L4T r36), without Docker:
#   apt packages (TensorRT Python bindings, OpenCV with GStreamer, GStreamer plugins, optional mosquitto),
#   a virtualenv in /opt/rtmw-edge/venv with the serve and gpu extras, camera permissions (group video,
#   udev rule), the rtmw-edge system user, /etc/rtmw-edge/daemon.toml, and the systemd unit
#   scripts/rtmw-edge.service (installed as it is).
#
#   sudo scripts/jetson_setup.sh [options]
#     --mqtt         also install the mosquitto broker and clients (for [mqtt] enabled = true)
#     --no-systemd   skip the system user, /etc/rtmw-edge and the unit
#     --start        enable and start the daemon now (default: enable only; edit the configuration first)
#     --force        run on a machine that does not look like a JetPack 6 Jetson
#     --dry-run      print what would be done, change nothing (no root needed)
#     -h, --help
#   Environment: PREFIX [/opt/rtmw-edge], CUDA_MINOR [12.6: the NVRTC wheel matching JetPack's CUDA].
#
# Safe to run again: packages are installed once, an existing /etc/rtmw-edge/daemon.toml or env file is
# never overwritten, the venv is upgraded in place.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/opt/rtmw-edge}
VENV="$PREFIX/venv"
CUDA_MINOR=${CUDA_MINOR:-12.6}
SERVICE_USER=rtmw-edge
STATE_DIR=/var/lib/rtmw-edge
ETC_DIR=/etc/rtmw-edge
UNIT_SRC="$ROOT/scripts/rtmw-edge.service"
UDEV_RULE=/etc/udev/rules.d/70-rtmw-edge-cameras.rules

mqtt=0
systemd=1
start=0
force=0
dry_run=0

usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
log() { printf '\033[1mjetson_setup:\033[0m %s\n' "$*" >&2; }
die() {
    printf 'jetson_setup: ERROR: %s\n' "$*" >&2
    exit 1
}
# run CMD...: run it, or print it under --dry-run
run() {
    if [[ $dry_run -eq 1 ]]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}
# write_file PATH MODE: stdin into PATH (never under --dry-run: it is printed instead)
write_file() {
    local path=$1 mode=$2 content
    content=$(cat)
    if [[ $dry_run -eq 1 ]]; then
        printf '+ write %s (mode %s):\n%s\n' "$path" "$mode" "$content"
    else
        printf '%s\n' "$content" > "$path"
        chmod "$mode" "$path"
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --mqtt) mqtt=1 ;;
        --no-systemd) systemd=0 ;;
        --start) start=1 ;;
        --force) force=1 ;;
        --dry-run) dry_run=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

# ------------------------------------------------------------------------------------------ checks
[[ $dry_run -eq 1 || $(id -u) -eq 0 ]] || die "run as root: sudo $0 $*"
[[ -f "$ROOT/pyproject.toml" && -f "$UNIT_SRC" ]] || die "run from a rtmw-edge checkout ($ROOT has no pyproject.toml or $UNIT_SRC)"
if [[ -r /etc/nv_tegra_release ]]; then
    release=$(head -n 1 /etc/nv_tegra_release)
    log "L4T: $release"
    if [[ "$release" != *"R36"* && $force -eq 0 ]]; then
        die "rtmw-edge targets JetPack 6 (L4T R36, TensorRT 10.3); this is '$release' (use --force to go on)"
    fi
elif [[ $force -eq 0 ]]; then
    die "no /etc/nv_tegra_release: this does not look like a Jetson (use --force to go on)"
fi

# ------------------------------------------------------------------------------------------ apt
# python3-libnvinfer: TensorRT's Python bindings from JetPack (the PyPI tensorrt wheels are not for Jetson).
# OpenCV: JetPack's (nvidia-opencv) when it is installed, else Ubuntu's python3-opencv; both have GStreamer,
# which CSI (nvarguscamerasrc) and hardware-decoded RTSP pipelines need; the PyPI wheels do not.
packages=(python3-venv python3-pip python3-dev python3-libnvinfer
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-tools
    v4l-utils ca-certificates)
if ! python3 -c "import cv2" 2>/dev/null; then
    packages+=(python3-opencv)
fi
if [[ $mqtt -eq 1 ]]; then
    packages+=(mosquitto mosquitto-clients)
fi
log "installing apt packages: ${packages[*]}"
run apt-get update
run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"

# ------------------------------------------------------------------------------------------ Python
# A venv that also sees the system packages (tensorrt, cv2); pip's opencv-python-headless is removed after
# the install so that the system OpenCV (with GStreamer) is the one imported.
log "virtualenv $VENV with rtmw-edge[serve,gpu]"
run mkdir -p "$PREFIX"
run python3 -m venv --system-site-packages "$VENV"
constraints="$PREFIX/constraints.txt"
printf '%s\n' 'numpy<2' "nvidia-cuda-nvrtc-cu12==$CUDA_MINOR.*" | write_file "$constraints" 0644
run "$VENV/bin/python" -m pip install --upgrade pip
run "$VENV/bin/python" -m pip install --constraint "$constraints" "${ROOT}[serve,gpu]"
run "$VENV/bin/python" -m pip uninstall -y opencv-python-headless
if [[ $dry_run -eq 0 ]]; then
    "$VENV/bin/python" -c "import re, sys, cv2; sys.exit(None if re.search(r'GStreamer:\s+YES', cv2.getBuildInformation()) else 'OpenCV ' + cv2.__version__ + ' has no GStreamer support')" ||
        die "the OpenCV the venv imports cannot open GStreamer pipelines (CSI cameras)"
    "$VENV/bin/python" -c "import tensorrt" || die "TensorRT's Python bindings do not import (python3-libnvinfer)"
fi
run mkdir -p "$PREFIX/docs"
run cp "$ROOT/docs/daemon.md" "$PREFIX/docs/" # the unit's Documentation= link

# ------------------------------------------------------------------------------------------ cameras
# /dev/video* (USB/V4L2) group video, read-write for the group; the invoking user joins the group too.
log "camera permissions: group video ($UDEV_RULE)"
write_file "$UDEV_RULE" 0644 <<'EOF'
# rtmw-edge: V4L2 cameras readable by group video (the daemon's user is a member)
SUBSYSTEM=="video4linux", GROUP="video", MODE="0660"
EOF
run udevadm control --reload-rules
run udevadm trigger --subsystem-match=video4linux
if [[ -n "${SUDO_USER:-}" && "${SUDO_USER}" != root ]]; then
    run usermod --append --groups video "$SUDO_USER"
    log "$SUDO_USER was added to group video (log in again for it to apply)"
fi

# ------------------------------------------------------------------------------------------ systemd
if [[ $systemd -eq 1 ]]; then
    log "system user $SERVICE_USER, $ETC_DIR, systemd unit rtmw-edge.service"
    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --system --user-group --home-dir "$STATE_DIR" --shell /usr/sbin/nologin --groups video \
            "$SERVICE_USER"
    else
        run usermod --append --groups video "$SERVICE_USER"
    fi
    # the unit's StateDirectory= would create it at the first start; engines can be built into it before
    run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR" "$STATE_DIR/engines"
    run install -d -m 0755 "$ETC_DIR"
    if [[ ! -e "$ETC_DIR/daemon.toml" ]]; then
        run install -m 0644 "$ROOT/configs/daemon.toml" "$ETC_DIR/daemon.toml"
    else
        log "keeping the existing $ETC_DIR/daemon.toml"
    fi
    if [[ ! -e "$ETC_DIR/env" ]]; then
        write_file "$ETC_DIR/env" 0640 <<'EOF'
# RTMW_EDGE_* overrides for the rtmw-edge daemon (one VAR=value per line), e.g.
# RTMW_EDGE_SERVER_TOKEN=change-me-to-a-long-secret
# RTMW_EDGE_MODEL_BACKEND=tensorrt
EOF
    fi
    run install -m 0644 "$UNIT_SRC" /etc/systemd/system/rtmw-edge.service
    run systemctl daemon-reload
    if [[ $start -eq 1 ]]; then
        run systemctl enable --now rtmw-edge
    else
        run systemctl enable rtmw-edge
    fi
fi

log "done."
cat >&2 <<EOF
Next:
  - edit $ETC_DIR/daemon.toml (cameras, models: .onnx or .engine paths), then check it:
      sudo -u $SERVICE_USER $VENV/bin/rtmw-edge serve --config $ETC_DIR/daemon.toml --check
  - build the engines on this device (once per model and JetPack update), e.g.
      sudo -u $SERVICE_USER $VENV/bin/rtmw-edge build model.onnx -o $STATE_DIR/engines/
  - sudo systemctl restart rtmw-edge && journalctl -u rtmw-edge -f
  - for benchmarks: sudo nvpmodel -q; sudo jetson_clocks (this script changes neither)
EOF
