# Environment of the project; source it (`source scripts/env.sh`), do not run it.
#
# Everything heavy lives outside the checkout, at a stable path, so that a fresh clone (CI)
# reuses the virtual environment and Jittor's compiled kernels:
#   FEWSHOT_HOME  (default ~/.cache/jittor-fewshot)
#   FEWSHOT_VENV  (default $FEWSHOT_HOME/venv)
#   JITTOR_HOME   (default $FEWSHOT_HOME/jittor; Jittor keeps its kernel cache under it)

FEWSHOT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FEWSHOT_ROOT
export FEWSHOT_HOME="${FEWSHOT_HOME:-$HOME/.cache/jittor-fewshot}"
export FEWSHOT_VENV="${FEWSHOT_VENV:-$FEWSHOT_HOME/venv}"
export JITTOR_HOME="${JITTOR_HOME:-$FEWSHOT_HOME/jittor}"
export PYTHONPATH="$FEWSHOT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# Jittor probes for nvcc at import and, when it finds a CUDA driver but no toolkit, downloads one.
# Without a usable GPU an empty nvcc_path keeps it on the CPU and off the network. With a GPU we
# leave Jittor's CUDA detection alone (a user's own nvcc_path always wins).
if [ -z "${nvcc_path+x}" ]; then
    if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }; then
        export nvcc_path=""
    fi
fi

if [ -f "$FEWSHOT_VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    VIRTUAL_ENV_DISABLE_PROMPT=1 source "$FEWSHOT_VENV/bin/activate"
fi
