#!/usr/bin/env bash
# One-command, idempotent set-up used by both README commands.
#
#   bash scripts/setup.sh          runtime + conversion (torch) dependencies
#   bash scripts/setup.sh --dev    also the test tools and reference implementations
#
# Creates the venv, installs the pins of pyproject.toml (only when they changed), installs
# Debian's oneDNN (libdnnl-dev) when missing and links it where Jittor looks for its MKL build,
# so convolutions are fast and Jittor never tries to download it, sets Jittor up for a GPU when
# nvidia-smi lists one (scripts/cuda_setup.py, docs/GPU.md: never downloads CUDA; one line and
# the CPU when the GPU cannot be used, exit 1 if FEWSHOT_DEVICE=cuda), patches Jittor for
# simultaneous starts (scripts/jittor_concurrent.py) and warms it up (its first import compiles
# for a few minutes and may exit asking to be re-run).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

case "${FEWSHOT_DEVICE:-auto}" in
    auto | cuda | cpu) ;;
    *)
        echo "[setup] error: FEWSHOT_DEVICE='$FEWSHOT_DEVICE' is not a device: use one of auto, cuda, cpu" >&2
        exit 2
        ;;
esac

dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[setup] %s\n' "$*" >&2; }
# pip on this kind of machine warns about every missing local index folder; keep real messages.
pip_install() {
    "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 |
        { grep -v '^WARNING: Location .* is ignored' || true; } >&2
}

# --- 1. virtual environment -------------------------------------------------------------
PY="${FEWSHOT_PYTHON:-python3}"
if [ ! -x "$FEWSHOT_VENV/bin/python" ]; then
    log "creating venv at $FEWSHOT_VENV"
    mkdir -p "$(dirname "$FEWSHOT_VENV")"
    "$PY" -m venv "$FEWSHOT_VENV"
fi
VPY="$FEWSHOT_VENV/bin/python"

# --- 2. pinned packages, re-installed only when pyproject.toml or this script changed -----
groups="runtime convert"
[ "$dev" = 1 ] && groups="$groups dev"
# The stamp is named after the pins and this script and lists the groups installed with them.
stamp=$(cat "$FEWSHOT_ROOT/pyproject.toml" "$FEWSHOT_ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)
stamp_file="$FEWSHOT_VENV/.fewshot-stamp-$stamp"
missing=""
for g in $groups; do
    grep -qx "$g" "$stamp_file" 2>/dev/null || missing="$missing $g"
done
if [ -n "$missing" ]; then
    reqs=$("$VPY" - "$FEWSHOT_ROOT/pyproject.toml" $groups <<'EOF'
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
meta = tomllib.load(open(sys.argv[1], "rb"))
project, groups = meta["project"], sys.argv[2:]
out = []
for g in groups:
    out += project["dependencies"] if g == "runtime" else project["optional-dependencies"][g]
print("\n".join(out))
EOF
    ) || { "$VPY" -m pip install -q tomli && exec bash "$0" "$@"; }
    log "installing pinned packages ($groups)"
    # shellcheck disable=SC2086
    pip_install $reqs
    nodeps=$("$VPY" -c "
import sys
try:
    import tomllib
except ImportError:
    import tomli as tomllib
print(' '.join(tomllib.load(open(sys.argv[1], 'rb'))['tool']['fewshot']['nodeps']))
" "$FEWSHOT_ROOT/pyproject.toml")
    # shellcheck disable=SC2086
    pip_install --no-deps $nodeps
    if "$VPY" -c "import torchvision" >/dev/null 2>&1; then
        log "warning: torchvision is installed in $FEWSHOT_VENV; it breaks transformers beside torch 2.13 here"
    fi
    installed=$(cat "$stamp_file" 2>/dev/null || true)
    rm -f "$FEWSHOT_VENV"/.fewshot-stamp-*
    printf '%s\n' $installed $groups | sort -u >"$stamp_file"
fi

# --- 3. oneDNN for Jittor's CPU convolutions ---------------------------------------------
find_dnnl() {
    dnnl_hpp=$(dpkg -L libdnnl-dev 2>/dev/null | grep -m1 '/dnnl\.hpp$' || true)
    dnnl_so=$(dpkg -L libdnnl-dev 2>/dev/null | grep -m1 '/libdnnl\.so$' || true)
    [ -n "$dnnl_hpp" ] && [ -f "$dnnl_hpp" ] && [ -n "$dnnl_so" ] && [ -e "$dnnl_so" ]
}
mkl_dir="$JITTOR_HOME/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp"
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && [ ! -e "$mkl_dir/lib/libmkldnn.so" ]; then
    if ! find_dnnl; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo -n"
        log "installing Debian's libdnnl-dev (oneDNN) for Jittor's CPU convolutions"
        $sudo apt-get install -y -q libdnnl-dev >/dev/null 2>&1 ||
            { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q libdnnl-dev >/dev/null 2>&1; } || true
    fi
    if find_dnnl; then
        mkdir -p "$mkl_dir/lib"
        ln -sfn "$(dirname "$dnnl_hpp")" "$mkl_dir/include"
        ln -sfn "$dnnl_so" "$mkl_dir/lib/libmkldnn.so"
        log "linked oneDNN into $mkl_dir"
    else
        log "warning: libdnnl-dev is not installable here; Jittor will fetch its own MKL build"
        log "         (or set use_mkl=0: no download, but convolutions about 100x slower)"
    fi
fi

# --- 4. the GPU, when nvidia-smi lists one -------------------------------------------------
# Jittor's own CUDA download leaves $JITTOR_HOME/.cache/jittor/jtcuda behind when it fails
# (offline), and every later import then tries again: remove one that holds no toolkit.
jtcuda="$JITTOR_HOME/.cache/jittor/jtcuda"
if [ -d "$jtcuda" ] && ! compgen -G "$jtcuda/*/bin/nvcc" >/dev/null; then
    log "removing $jtcuda (an incomplete CUDA download of Jittor's)"
    rm -rf "$jtcuda"
fi
if [ "${FEWSHOT_DEVICE:-auto}" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 &&
    nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    "$VPY" "$FEWSHOT_ROOT/scripts/cuda_setup.py" "$FEWSHOT_CUDA_ENV" || exit 1
    # shellcheck disable=SC1090
    source "$FEWSHOT_CUDA_ENV"
elif [ "${FEWSHOT_DEVICE:-auto}" = cuda ]; then
    log "error: FEWSHOT_DEVICE=cuda but nvidia-smi lists no GPU (install the NVIDIA driver)"
    exit 1
fi

# --- 5. warm Jittor up -------------------------------------------------------------------
# First make the venv's Jittor safe to start from several processes at once: it rewrote
# ~/.cache/jittor/config.json in place, unlocked (scripts/jittor_concurrent.py; idempotent).
"$VPY" "$FEWSHOT_ROOT/scripts/jittor_concurrent.py" >/dev/null || exit 1
# The first import compiles Jittor's core (minutes); an import that finds a rebuilt core prints
# "please rerun" and exits 0, so loop until the import really completes.
for attempt in 1 2 3 4; do
    if out=$("$VPY" -c "import jittor; print('JITTOR_READY', jittor.__version__)" 2>&1) &&
        printf '%s' "$out" | grep -q JITTOR_READY; then
        log "$(printf '%s' "$out" | grep JITTOR_READY | sed 's/JITTOR_READY/jittor/') ready (JITTOR_HOME=$JITTOR_HOME)"
        exit 0
    fi
    log "warming Jittor up (attempt $attempt; the first time compiles for a few minutes)"
done
printf '%s\n' "$out" | tail -20 >&2
log "error: 'import jittor' keeps failing, see the output above"
exit 1
