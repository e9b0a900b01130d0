#!/usr/bin/env bash
# Set up edge-agent on a Jetson (JetPack 4.6 on Nano/TX2, JetPack 5.1 or 6 on Xavier/Orin), in
# the order that works. Safe to run again: done steps are skipped or converge.
#
#   tools/jetson/setup.sh [--venv DIR] [--config FILE] [--no-jtop] [--editable]
#
# Run it as the user who will own the virtual environment; it asks sudo for the system steps.
#   1. checks: a Jetson (/etc/nv_tegra_release), JetPack 4.6 (L4T R32.6+), 5.x (R35) or 6.x
#      (R36), CUDA at /usr/local/cuda (nvcc), the system python3 (TensorRT's bindings exist
#      only for it: 3.6 on JetPack 4.6)
#   2. sudo apt-get install python3-venv python3-dev python3-pip python3-numpy python3-yaml
#      build-essential mosquitto-clients. NOT python3-opencv: on JetPack 4.6 that is Ubuntu's
#      OpenCV 3.2 without GStreamer and it shadows JetPack's cv2 (csi:// and rtsp:// then fail)
#   3. jetson-stats (jtop) system-wide: sudo -H pip3 install -U jetson-stats (it installs the
#      jtop service and refuses to install in a venv); skipped with --no-jtop or when present
#   4. a venv with --system-site-packages at DIR (default ~/edge-agent-venv), so it sees
#      TensorRT, JetPack's cv2, numpy and jtop
#   5. pycuda, built against the system numpy (--no-build-isolation) with
#      PATH=/usr/local/cuda/bin:$PATH CUDA_INC_DIR=/usr/local/cuda/include; pycuda<=2022.1 on
#      Python 3.6 (2022.2+ needs 3.8); skipped when the venv already imports it
#   6. the agent from this checkout (pip install .; --editable for pip install -e .)
#   7. edge-agent check -c FILE (default: the checkout's config.yaml); its exit code is ours
# Then, for the service: sudo systemd/install.sh --exec DIR/bin/edge-agent
#
# --sysroot DIR reads the board's files (etc/nv_tegra_release, proc/device-tree/model,
# usr/local/cuda) under DIR instead of / (the tests use it with stub commands on PATH).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
VENV="${HOME:-/root}/edge-agent-venv"
CONFIG="$SRC_DIR/config.yaml"
JTOP=1
EDITABLE=0
SYSROOT=""

die() {
    echo "jetson setup: $*" >&2
    exit 1
}

say() {
    echo "==> $*"
}

usage() {
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) [ $# -ge 2 ] || die "--venv needs a directory"; VENV="$2"; shift 2 ;;
        --venv=*) VENV="${1#*=}"; shift ;;
        --config) [ $# -ge 2 ] || die "--config needs a file"; CONFIG="$2"; shift 2 ;;
        --config=*) CONFIG="${1#*=}"; shift ;;
        --no-jtop) JTOP=0; shift ;;
        --editable) EDITABLE=1; shift ;;
        --sysroot) [ $# -ge 2 ] || die "--sysroot needs a directory"; SYSROOT="${2%/}"; shift 2 ;;
        --sysroot=*) SYSROOT="${1#*=}"; SYSROOT="${SYSROOT%/}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
case "$VENV" in
    /*) ;;
    *) VENV="$(pwd)/$VENV" ;;
esac

AS_ROOT=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "sudo not found: run as root, or install sudo"
    AS_ROOT="sudo -H"
fi

# A system change: through sudo -H (HOME=/root, as jetson-stats asks) unless already root.
as_root() {
    if [ -n "$AS_ROOT" ]; then
        sudo -H "$@"
    else
        "$@"
    fi
}

# --- 1. checks -----------------------------------------------------------------------------
RELEASE_FILE="$SYSROOT/etc/nv_tegra_release"
MODEL_FILE="$SYSROOT/proc/device-tree/model"
CUDA="$SYSROOT/usr/local/cuda"

[ -f "$RELEASE_FILE" ] || die "not a Jetson: /etc/nv_tegra_release is missing (model:" \
    "$( (tr -d '\0' < "$MODEL_FILE") 2>/dev/null || echo unknown)); this script sets up" \
    "JetPack's Python stack; elsewhere: python3 -m venv .venv && .venv/bin/pip install -e" \
    "'.[onnxruntime,opencv]'"
# "# R32 (release), REVISION: 7.1, GCID: ..., BOARD: t210ref, EABI: aarch64, DATE: ..."
first="$(head -n 1 "$RELEASE_FILE")"
major="$(echo "$first" | sed -n 's/^# R\([0-9][0-9]*\) (release).*/\1/p')"
revision="$(echo "$first" | sed -n 's/.*REVISION: \([0-9][0-9.]*\).*/\1/p')"
[ -n "$major" ] && [ -n "$revision" ] || die "cannot read the L4T release from" \
    "/etc/nv_tegra_release ('$first'): is this a JetPack install?"
l4t="R$major.$revision"
minor="${revision%%.*}"
case "$major" in
    32) if [ "$minor" -lt 6 ]; then
            die "L4T $l4t is older than JetPack 4.6 (L4T R32.6): its TensorRT 7 is not" \
                "supported; flash JetPack 4.6.x (L4T R32.7) or newer"
        fi
        jetpack="4.6"; want_python="3.6" ;;
    35) jetpack="5.x"; want_python="3.8" ;;
    36) jetpack="6.x"; want_python="3.10" ;;
    *) die "L4T $l4t is not a JetPack this agent supports (4.6 = R32.6/R32.7, 5.x = R35," \
           "6.x = R36)" ;;
esac
say "Jetson with L4T $l4t (JetPack $jetpack)"

[ -x "$CUDA/bin/nvcc" ] || die "no CUDA at /usr/local/cuda (bin/nvcc missing): pycuda needs" \
    "JetPack's CUDA toolkit: sudo apt-get install nvidia-jetpack (or the CUDA of your JetPack)"

command -v python3 >/dev/null 2>&1 || die "python3 not found: JetPack's system Python is needed"
python="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$python" != "$want_python" ]; then
    echo "warning: python3 is $python but JetPack $jetpack's TensorRT bindings are for" \
         "$want_python; is python3 the system Python (/usr/bin/python3)?" >&2
fi
if python3 -c 'import tensorrt' >/dev/null 2>&1; then
    say "TensorRT's Python bindings import in the system python3 $python"
else
    echo "warning: TensorRT's Python bindings do not import in python3 $python: sudo apt-get" \
         "install python3-libnvinfer (JetPack); until then the agent runs on ONNX Runtime" >&2
fi

# JetPack's OpenCV (NVIDIA's, with GStreamer) and never Ubuntu's python3-opencv beside it.
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
if installed python3-opencv; then
    echo "warning: Ubuntu's python3-opencv is installed: on JetPack 4.6 it is OpenCV 3.2" \
         "without GStreamer and shadows JetPack's cv2 (csi:// and rtsp:// fail); remove it:" \
         "sudo apt-get remove python3-opencv" >&2
fi
if ! installed libopencv-python && ! installed nvidia-opencv; then
    echo "warning: JetPack's OpenCV (libopencv-python) is not installed: sudo apt-get install" \
         "nvidia-opencv (cameras need its GStreamer)" >&2
fi

# --- 2. system packages ---------------------------------------------------------------------
say "system packages (apt)"
as_root apt-get update
as_root apt-get install -y python3-venv python3-dev python3-pip python3-numpy python3-yaml \
    build-essential mosquitto-clients

# --- 3. jetson-stats, system-wide -----------------------------------------------------------
if [ "$JTOP" -eq 0 ]; then
    say "jetson-stats skipped (--no-jtop): no power readings through jtop"
elif python3 -c 'import jtop' >/dev/null 2>&1; then
    say "jetson-stats already installed system-wide"
else
    say "jetson-stats system-wide (it installs the jtop service; log in again for its group)"
    as_root pip3 install -U jetson-stats
fi

# --- 4. the virtual environment -------------------------------------------------------------
if [ -x "$VENV/bin/python" ]; then
    grep -Eq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null || die \
        "$VENV exists but was made without --system-site-packages, so it cannot see TensorRT" \
        "and JetPack's cv2: remove it (rm -r $VENV) or pass --venv ANOTHER_DIR"
    say "virtual environment $VENV exists"
else
    say "virtual environment $VENV (--system-site-packages)"
    python3 -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
if [ "$python" = "3.6" ]; then
    # Ubuntu 18.04's venv has pip 9 (no --no-build-isolation); these are the last for 3.6.
    "$VPY" -m pip install -U "pip<22" "setuptools<60" wheel
else
    "$VPY" -m pip install -U pip setuptools wheel
fi

# --- 5. pycuda, against /usr/local/cuda and the system numpy --------------------------------
if "$VPY" -c 'import pycuda' >/dev/null 2>&1; then
    say "pycuda already installed"
else
    if [ "$python" = "3.6" ]; then pycuda="pycuda<=2022.1"; else pycuda="pycuda"; fi
    say "$pycuda (compiles against CUDA; minutes on a Nano)"
    # Built against the system numpy (not an isolated newer one), or its import fails.
    PATH="$CUDA/bin:$PATH" CUDA_ROOT="$CUDA" CUDA_INC_DIR="$CUDA/include" \
        "$VPY" -m pip install --no-build-isolation "$pycuda"
fi

# --- 6. the agent ---------------------------------------------------------------------------
say "edge-agent from $SRC_DIR"
if [ "$EDITABLE" -eq 1 ]; then
    "$VPY" -m pip install -e "$SRC_DIR"
else
    "$VPY" -m pip install "$SRC_DIR"
fi

# --- 7. check -------------------------------------------------------------------------------
say "edge-agent check -c $CONFIG"
status=0
"$VENV/bin/edge-agent" check -c "$CONFIG" || status=$?
if [ "$status" -eq 0 ]; then
    say "done. Service: sudo $SRC_DIR/systemd/install.sh --exec $VENV/bin/edge-agent"
else
    echo "jetson setup: installed, but edge-agent check reports FAIL lines (above): fix those," \
         "then run $VENV/bin/edge-agent check -c $CONFIG again" >&2
fi
exit "$status"
