"""Set Jittor up for a listed GPU, or say in one line why not (run by scripts/setup.sh).

    python scripts/cuda_setup.py ENV_FILE

Runs only when ``nvidia-smi -L`` lists a GPU and FEWSHOT_DEVICE is not ``cpu``; never downloads
anything. The checks, the exports written to ENV_FILE and the messages: docs/GPU.md. Exit status
1 only when FEWSHOT_DEVICE=cuda asked for an unusable GPU. Nothing is re-checked when no input
changed since the last success.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import jittor_cuda13  # noqa: E402

# Newest g++ major each nvcc accepts (CUDA installation guides; nvcc refuses newer ones).
MAX_GCC = [((13, 0), 15), ((12, 8), 14), ((12, 4), 13), ((12, 0), 12), ((11, 4), 11), ((11, 1), 10)]
# Jittor downloads cutt at import unless this archive is in its cache (see docs/GPU.md).
CUTT_ZIP = ".cache/jittor/cutt/cutt-1.2.zip"
CUTT_MD5 = "14d0fd1132c8cd657dc3cf29ce4db931"
CHECK_CODE = """
import json, numpy as np
from models.runtime import jittor, device_record
jt = jittor("cuda")
a = np.arange(12, dtype=np.float32).reshape(3, 4)
x = jt.array(a)
assert np.allclose((x @ x.transpose()).numpy(), a @ a.T), "matmul"
assert np.allclose(jt.nn.softmax(x, dim=1).numpy().sum(1), 1, atol=1e-5), "softmax"
print("FEWSHOT_CUDA_OK", json.dumps(device_record()))
"""


class Unusable(Exception):
    """The GPU cannot be used; args: (what is missing, how to get it)."""


def say(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout


def version_of(text: str) -> tuple[int, int]:
    m = re.search(r"release (\d+)\.(\d+)", text) or re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def listed_gpus() -> list[str]:
    """GPU names from ``nvidia-smi -L`` ("GPU 0: NVIDIA H200 (UUID: ...)")."""
    out = run(["nvidia-smi", "-L"]) if shutil.which("nvidia-smi") else ""
    return re.findall(r"^GPU \d+: (.+?)(?: \(UUID.*)?$", out, flags=re.M)


def driver_cuda() -> tuple[int, int]:
    """The CUDA version the driver supports, after checking that it sees a device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise Unusable(
            "the NVIDIA driver library libcuda.so.1 does not load",
            "install the NVIDIA driver (in a container: expose the GPU, docker run --gpus all)",
        ) from None
    version, count = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or not count.value:
        raise Unusable(
            "the NVIDIA driver sees no usable device",
            "check nvidia-smi and the device permissions (/dev/nvidia*)",
        )
    cuda.cuDriverGetVersion(ctypes.byref(version))
    return version.value // 1000, version.value % 1000 // 10


def nvcc_candidates() -> list[str]:
    found = [os.environ.get("FEWSHOT_NVCC", ""), shutil.which("nvcc") or ""]
    found += ["/usr/local/cuda/bin/nvcc"]
    found += sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), key=version_of, reverse=True)
    found += ["/opt/cuda/bin/nvcc", "/usr/bin/nvcc"]
    unique = []
    for path in found:
        real = os.path.realpath(path) if path else ""
        # Jittor takes the toolkit's headers and libraries from beside nvcc: skip wrappers
        # such as a /usr/local/bin/nvcc script that calls the real one.
        home = "/usr" if real == "/usr/bin/nvcc" else os.path.dirname(os.path.dirname(real))
        usable = real and os.access(real, os.X_OK) and os.path.isfile(f"{home}/include/cuda.h")
        if usable and real not in unique:
            unique.append(real)
    return unique


def pick_nvcc(driver: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """The first toolkit the driver can run: its nvcc and version."""
    seen = []
    for nvcc in nvcc_candidates():
        ver = version_of(run([nvcc, "--version"]))
        if ver <= driver:
            return nvcc, ver
        seen.append(f"nvcc {ver[0]}.{ver[1]} at {nvcc}")
    need = f"{driver[0]}.{driver[1]}"
    if seen:
        raise Unusable(
            f"every CUDA toolkit found is newer than the driver's CUDA {need} ({'; '.join(seen)})",
            f"update the NVIDIA driver or install CUDA toolkit {need} or older",
        )
    raise Unusable(
        "no CUDA toolkit (nvcc) found",
        f"install CUDA toolkit {need} or older (NVIDIA's runfile or .deb works offline) "
        "or set FEWSHOT_NVCC=/path/to/bin/nvcc",
    )


def cuda_dirs(nvcc: str) -> tuple[list[str], list[str]]:
    """(include dirs, library dirs) where Jittor 1.3.11 looks, for this nvcc."""
    home = os.path.dirname(os.path.dirname(nvcc))
    lib = "/usr/lib/x86_64-linux-gnu" if nvcc == "/usr/bin/nvcc" else f"{home}/lib64"
    target = f"{home}/targets/x86_64-linux"
    incs = [f"{home}/include", f"{target}/include", "/usr/include"]
    libs = [f"{home}/bin", lib, f"{target}/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib"]
    return incs, libs


def pick_compiler(nvcc_ver: tuple[int, int]) -> str | None:
    """None when the default g++ suits this nvcc, else the path of an older g++ that does."""
    limit = next((gcc for ver, gcc in MAX_GCC if nvcc_ver >= ver), 9)
    default = os.environ.get("cc_path") or shutil.which("g++") or ""
    major = version_of(run([default, "-dumpfullversion"]) + ".0")[0] if default else 0
    if default and major <= limit:
        return None
    for n in range(limit, 6, -1):
        older = shutil.which(f"g++-{n}")
        if older:
            return older
    raise Unusable(
        f"g++ {major or '(none)'} is too new for nvcc {nvcc_ver[0]}.{nvcc_ver[1]}, "
        f"which accepts g++ {limit} or older",
        f"apt-get install g++-{limit} (or set cc_path=/path/to/g++-{limit})",
    )


def find(dirs: list[str], name: str) -> str | None:
    return next((f"{d}/{name}" for d in dirs if os.path.isfile(f"{d}/{name}")), None)


def library_notes(nvcc: str, nvcc_ver: tuple[int, int]) -> dict[str, str]:
    """cuBLAS and cuDNN as Jittor will find them: "yes ..." or what is missing and how to get it."""
    incs, libs = cuda_dirs(nvcc)
    suffix = ".8" if nvcc_ver[0] == 11 else ""  # Jittor prefers the .8 libraries with CUDA 11
    notes = {"cuBLAS": "yes", "cuDNN": "yes"}
    cublas = find(libs, "libcublas.so" + suffix) or find(libs, "libcublas.so")
    if not (find(incs, "cublas.h") and cublas):
        notes["cuBLAS"] = (
            "missing (cublas.h and libcublas.so beside nvcc): matrix products use Jittor's own "
            f"kernels; install the toolkit's cuBLAS (libcublas-dev-{nvcc_ver[0]}-{nvcc_ver[1]})"
        )
    header = find(incs, "cudnn_version.h") or find(incs, "cudnn.h")
    major = re.search(r"#define CUDNN_MAJOR (\d+)", Path(header).read_text()) if header else None
    cudnn8_libs = ["libcudnn.so", "libcudnn_ops_infer.so", "libcudnn_cnn_infer.so"]
    if not (major and major.group(1) == "8" and all(find(libs, n) for n in cudnn8_libs)):
        found = f"cuDNN {major.group(1)} found, " if major else ""
        notes["cuDNN"] = (
            f"missing ({found}Jittor 1.3.11 needs cuDNN 8's cudnn.h and libcudnn*.so in the "
            "toolkit's folders): convolutions use Jittor's own, slower kernels; see docs/GPU.md"
        )
    return notes


def check(env: dict[str, str], log_path: Path) -> dict:
    """Run CHECK_CODE on CUDA in a child process; Jittor's first import may ask for a re-run."""
    out = ""
    for _ in range(3):
        r = subprocess.run(
            [sys.executable, "-c", CHECK_CODE], env=env, cwd=ROOT, capture_output=True, text=True
        )
        out = r.stdout + r.stderr
        log_path.write_text(out)
        for line in r.stdout.splitlines():
            if line.startswith("FEWSHOT_CUDA_OK "):
                return json.loads(line.split(" ", 1)[1])
        if r.returncode != 0:
            break
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "rror" in ln] or lines or ["no output"]
    raise Unusable(
        f"a test CUDA computation failed ({errors[-1][:200]})", f"full output in {log_path}"
    )


def write_env(path: Path, values: dict[str, str], comment: str) -> None:
    text = f"# {comment}\n" + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    jittor_cuda13.write_atomic(path, text)


def configure(env_file: Path, gpus: list[str]) -> dict[str, str]:
    """The exports for a working GPU; raises Unusable with what is missing."""
    driver = driver_cuda()
    nvcc, nvcc_ver = pick_nvcc(driver)
    incs, libs = cuda_dirs(nvcc)
    if not find(libs[1:2], "libcudart.so"):
        raise Unusable(
            f"{libs[1]}/libcudart.so is missing beside {nvcc}",
            "install the toolkit's CUDA runtime (cuda-cudart-dev)",
        )
    cc = pick_compiler(nvcc_ver)
    values = {"nvcc_path": nvcc, "use_cutlass": "0"}  # nothing in Jittor 1.3.11 uses cutlass
    if cc:
        values["cc_path"] = cc
    cutt_zip = Path(os.environ.get("JITTOR_HOME", Path.home())) / CUTT_ZIP
    cutt_zip_ok = cutt_zip.is_file() and hashlib.md5(cutt_zip.read_bytes()).hexdigest() == CUTT_MD5
    if not (os.environ.get("CUTT_PATH") or cutt_zip_ok):  # Jittor would download cutt
        values["use_cutt"] = "0"
    notes = library_notes(nvcc, nvcc_ver)
    if nvcc_ver >= (13, 0):
        try:
            changed = jittor_cuda13.apply(jittor_cuda13.jittor_dir())
        except ValueError as e:
            raise Unusable(
                f"the CUDA 13 patch does not fit this Jittor ({e})", "use jittor==1.3.11.0"
            ) from None
        if changed:
            say(f"patched the venv's Jittor for CUDA 13 ({len(changed)} files; docs/GPU.md)")
    inputs = [gpus, driver, values, notes, jittor_cuda13.is_patched(jittor_cuda13.jittor_dir())]
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    summary = (
        f"{gpus[0]}, driver CUDA {driver[0]}.{driver[1]}, nvcc {nvcc_ver[0]}.{nvcc_ver[1]}, "
        + ", ".join(f"{k} {'yes' if v == 'yes' else 'no'}" for k, v in notes.items())
    )
    values["FEWSHOT_CUDA"] = summary
    old = env_file.read_text() if env_file.is_file() else ""
    if f"# ok {key}" not in old:
        log_path = env_file.with_suffix(".log")
        say(f"checking CUDA: {summary} (the first time compiles Jittor for CUDA: minutes)")
        env = {k: v for k, v in os.environ.items() if k != "FEWSHOT_CUDA_PROBLEM"}
        check({**env, **values, "FEWSHOT_DEVICE": "cuda"}, log_path)
    for name, note in notes.items():
        if note != "yes":
            say(f"warning: GPU used without {name}: {note}")
    write_env(env_file, values, f"ok {key}: written by scripts/cuda_setup.py")
    return values


def main(argv: list[str]) -> int:
    env_file = Path(argv[1])
    wanted = os.environ.get("FEWSHOT_DEVICE") or "auto"
    gpus = listed_gpus()
    if not gpus:
        write_env(env_file, {"nvcc_path": ""}, "no GPU listed by nvidia-smi")
        return 0
    try:
        values = configure(env_file, gpus)
    except Unusable as e:
        what, how = e.args
        problem = f"GPU {gpus[0]} not usable: {what}; {how}"
        write_env(env_file, {"nvcc_path": "", "FEWSHOT_CUDA_PROBLEM": problem}, "GPU not usable")
        if wanted == "cuda":
            say(f"error: {problem} (FEWSHOT_DEVICE=cuda)")
            return 1
        say(f"{problem}. Running on the CPU.")
        return 0
    say(f"CUDA ready: {values['FEWSHOT_CUDA']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
