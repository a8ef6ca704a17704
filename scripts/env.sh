# Environment of the project; source it (`source scripts/env.sh`), do not run it.
#
# Everything heavy lives outside the checkout, at a stable path, so that a fresh clone (CI)
# reuses the virtual environment and Jittor's compiled kernels:
#   FEWSHOT_HOME  (default ~/.cache/jittor-fewshot)
#   FEWSHOT_VENV  (default $FEWSHOT_HOME/venv)
#   JITTOR_HOME   (default $FEWSHOT_HOME/jittor; Jittor keeps its kernel cache under it)
#   FEWSHOT_CUDA_ENV (default $JITTOR_HOME/fewshot-cuda.env; the GPU set-up's result)

FEWSHOT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FEWSHOT_ROOT
export FEWSHOT_HOME="${FEWSHOT_HOME:-$HOME/.cache/jittor-fewshot}"
export FEWSHOT_VENV="${FEWSHOT_VENV:-$FEWSHOT_HOME/venv}"
export JITTOR_HOME="${JITTOR_HOME:-$FEWSHOT_HOME/jittor}"
export PYTHONPATH="$FEWSHOT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# Jittor probes for nvcc at import and, when it finds a driver but no toolkit, downloads one.
# It gets a CUDA toolkit only through what scripts/setup.sh found to work (scripts/cuda_setup.py
# writes $FEWSHOT_CUDA_ENV); otherwise nvcc_path="" keeps it on the CPU and off the network.
# FEWSHOT_DEVICE=cpu skips every CUDA probe. Choose a toolkit with FEWSHOT_NVCC (docs/GPU.md).
export FEWSHOT_CUDA_ENV="${FEWSHOT_CUDA_ENV:-$JITTOR_HOME/fewshot-cuda.env}"
unset FEWSHOT_CUDA FEWSHOT_CUDA_PROBLEM
export nvcc_path=""
if [ "${FEWSHOT_DEVICE:-auto}" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 &&
    nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    if [ -f "$FEWSHOT_CUDA_ENV" ]; then
        # shellcheck disable=SC1090
        source "$FEWSHOT_CUDA_ENV"
    else
        export FEWSHOT_CUDA_PROBLEM="a GPU is listed but not set up yet: run bash scripts/setup.sh"
    fi
fi

if [ -f "$FEWSHOT_VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    VIRTUAL_ENV_DISABLE_PROMPT=1 source "$FEWSHOT_VENV/bin/activate"
fi
