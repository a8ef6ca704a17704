"""The GPU set-up (docs/GPU.md), proven without a GPU.

- FEWSHOT_DEVICE is validated in one line, and ``cpu`` runs no CUDA probe at all;
- a GPU that nvidia-smi lists but that cannot be used (a stub nvidia-smi here) gives one line and
  a CPU run, offline, with no traceback and no Jittor CUDA download folder (``jtcuda``);
- scripts/cuda_setup.py's diagnoses (toolkit, compiler, cuDNN) on fake toolkits;
- the CUDA 13 patch of Jittor's sources is idempotent, refuses foreign sources, and (with
  CUDA 13's nvcc on the machine) makes Jittor's CUDA sources compile: helper_cuda.h here, the
  whole CUDA core and every CUB construct Jittor uses under ``-m slow``;
- models.runtime logs Jittor's errors instead of swallowing them and keeps the device once chosen.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import cuda_setup  # noqa: E402
import jittor_cuda13  # noqa: E402

H200 = "GPU 0: NVIDIA H200 (UUID: GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0)"
NVSMI_Q = "Driver Version                            : 580.159.03\nCUDA Version : 13.0\n"


def stub(folder: Path, name: str, body: str) -> Path:
    """An executable shell script ``name`` in ``folder`` that logs each call to folder/calls."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{folder}/calls"\n{body}\n')
    path.chmod(0o755)
    return path


def stub_nvidia_smi(folder: Path) -> Path:
    """nvidia-smi of a machine with an H200: -L lists it, anything else prints the -q header."""
    return stub(
        folder,
        "nvidia-smi",
        f'if [ "$1" = -L ]; then echo "{H200}"; else printf "{NVSMI_Q}"; fi',
    )


def calls(folder: Path) -> list[str]:
    path = folder / "calls"
    return path.read_text().splitlines() if path.exists() else []


def shell(script: str, env: dict[str, str], netns: bool = False, timeout: int = 900):
    cmd = ["bash", "-c", script]
    if netns:
        cmd = ["unshare", "-n", *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def jtcuda() -> Path:
    return Path(os.environ.get("JITTOR_HOME", Path.home())) / ".cache/jittor/jtcuda"


def netns_or_skip() -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode:
        pytest.skip("needs unshare -n (root or user namespaces)")


RECORD_CODE = (
    "import json; from models.runtime import jittor, device_record; jt = jittor(); "
    'print("RECORD", json.dumps(device_record()), jt.compiler.nvcc_path == "")'
)
PRINT_RECORD = f"python -c '{RECORD_CODE}'"


def record(stdout: str) -> dict:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RECORD "))
    payload, nvcc_empty = line[len("RECORD ") :].rsplit(" ", 1)
    rec = json.loads(payload)
    rec["nvcc_path_empty"] = nvcc_empty == "True"
    return rec


# --- FEWSHOT_DEVICE ---------------------------------------------------------------------------


def test_invalid_device_is_one_line_error(monkeypatch):
    from models.runtime import DeviceError, requested_device

    monkeypatch.setenv("FEWSHOT_DEVICE", "tpu")
    with pytest.raises(DeviceError) as e:
        requested_device()
    assert isinstance(e.value, ValueError)
    assert str(e.value) == "FEWSHOT_DEVICE='tpu' is not a device: use one of auto, cuda, cpu"
    r = shell("bash scripts/setup.sh", {**os.environ, "FEWSHOT_DEVICE": "tpu"})
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "[setup] error: FEWSHOT_DEVICE='tpu' is not a device: use one of auto, cuda, cpu"
    ]


def test_cpu_device_runs_no_cuda_probe(tmp_path):
    stubs = tmp_path / "bin"
    stub_nvidia_smi(stubs)
    nvcc = stub(stubs, "nvcc", 'echo "Cuda compilation tools, release 13.0, V13.0.88"')
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "FEWSHOT_DEVICE": "cpu"}
    env["FEWSHOT_CUDA_ENV"] = str(tmp_path / "cuda.env")
    # The scripts: set-up, environment, then a Jittor start-up through models.runtime.
    r = shell(f"bash scripts/setup.sh && source scripts/env.sh && {PRINT_RECORD}", env)
    assert r.returncode == 0, r.stderr[-3000:]
    # Python alone, even with a toolkit named by nvcc_path: the runtime empties it.
    env_py = {**env, "nvcc_path": str(nvcc)}
    r2 = subprocess.run(
        [sys.executable, "-c", RECORD_CODE],
        cwd=ROOT,
        env=env_py,
        capture_output=True,
        text=True,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert calls(stubs) == [], "FEWSHOT_DEVICE=cpu must not run nvidia-smi or nvcc"
    for out in (r.stdout, r2.stdout):
        rec = record(out)
        assert rec["device"] == "cpu" and rec["requested"] == "cpu" and rec["cuda"] is None
        assert rec["nvcc_path_empty"]
    assert not (tmp_path / "cuda.env").exists()


# --- a listed GPU that cannot be used ----------------------------------------------------------


@pytest.mark.parametrize("wanted", ["auto", "cuda"])
def test_unusable_gpu_one_line_then_cpu_offline(tmp_path, wanted):
    netns_or_skip()
    if driver_loads():
        pytest.skip("an NVIDIA driver is installed here: this test needs a machine without one")
    stubs = tmp_path / "bin"
    stub_nvidia_smi(stubs)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "FEWSHOT_DEVICE": wanted}
    env["FEWSHOT_CUDA_ENV"] = str(tmp_path / "cuda.env")
    env.pop("nvcc_path", None)
    r = shell(f"bash scripts/setup.sh && source scripts/env.sh && {PRINT_RECORD}", env, True)
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "nvidia-smi -L" in calls(stubs), "the stub GPU was not looked at"
    assert not jtcuda().exists(), "Jittor's CUDA download folder was created"
    problem = [ln for ln in r.stderr.splitlines() if "not usable" in ln]
    assert len(problem) == 1, r.stderr
    assert "GPU NVIDIA H200 not usable: the NVIDIA driver library libcuda.so.1" in problem[0]
    assert "install the NVIDIA driver" in problem[0]
    if wanted == "cuda":
        assert r.returncode == 1
        assert problem[0].startswith("[setup] error: ") and "(FEWSHOT_DEVICE=cuda)" in problem[0]
        return
    assert r.returncode == 0, out[-3000:]
    assert problem[0].endswith("Running on the CPU.")
    rec = record(r.stdout)
    assert rec["device"] == "cpu" and rec["cuda"] is None and rec["nvcc_path_empty"]
    assert any("libcuda.so.1" in p for p in rec["problems"])
    # Asking for CUDA afterwards is one clear error naming the reason.
    code = (
        "from models.runtime import jittor\ntry: jittor('cuda')\nexcept ValueError as e: print(e)"
    )
    r2 = shell(f'source scripts/env.sh && python -c "{code}"', env, True)
    assert r2.returncode == 0 and "Traceback" not in r2.stderr, r2.stderr[-3000:]
    assert re.fullmatch(
        r"device 'cuda' was requested but Jittor has no CUDA: GPU NVIDIA H200 not usable: .*\n",
        r2.stdout,
    )


# --- scripts/cuda_setup.py's diagnoses ---------------------------------------------------------


def fake_toolkit(root: Path, version: str, cudnn: int | None = None) -> Path:
    """A CUDA home with an nvcc printing ``version``, libcudart, cuBLAS and optionally cuDNN."""
    nvcc = stub(
        root / "bin", "nvcc", f'echo "Cuda compilation tools, release {version}, V{version}"'
    )
    for name in ("lib64/libcudart.so", "lib64/libcublas.so", "include/cublas.h", "include/cuda.h"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    if cudnn:
        (root / "include/cudnn_version.h").write_text(f"#define CUDNN_MAJOR {cudnn}\n")
        names = ["libcudnn.so", "libcudnn_ops_infer.so", "libcudnn_cnn_infer.so"]
        if cudnn >= 9:
            names = ["libcudnn.so", "libcudnn_ops.so", "libcudnn_cnn.so"]
        for name in names:
            (root / "lib64" / name).touch()
    return nvcc


def test_probe_toolkit_messages(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_setup, "nvcc_candidates", lambda: [])
    with pytest.raises(cuda_setup.Unusable) as e:
        cuda_setup.pick_nvcc((13, 0))
    what, how = e.value.args
    assert what == "no CUDA toolkit (nvcc) found" and "install CUDA toolkit 13.0 or older" in how
    new = fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    monkeypatch.setattr(cuda_setup, "nvcc_candidates", lambda: [str(new)])
    with pytest.raises(cuda_setup.Unusable) as e:
        cuda_setup.pick_nvcc((12, 4))
    assert "newer than the driver's CUDA 12.4" in e.value.args[0]
    assert cuda_setup.pick_nvcc((13, 0)) == (str(new), (13, 0))


def test_probe_picks_an_older_gcc_or_says_which(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "g++", "echo 12.2.0")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("cc_path", raising=False)
    assert cuda_setup.pick_compiler((13, 0)) is None
    with pytest.raises(cuda_setup.Unusable) as e:
        cuda_setup.pick_compiler((11, 8))
    assert e.value.args == (
        "g++ 12 is too new for nvcc 11.8, which accepts g++ 11 or older",
        "apt-get install g++-11 (or set cc_path=/path/to/g++-11)",
    )
    older = stub(bin_dir, "g++-11", "echo 11.4.0")
    assert cuda_setup.pick_compiler((11, 8)) == str(older)


def test_probe_reports_cudnn_as_jittor_finds_it(tmp_path):
    nvcc = fake_toolkit(tmp_path / "c8", "12.2", cudnn=8)
    assert cuda_setup.library_notes(str(nvcc), (12, 2)) == {"cuBLAS": "yes", "cuDNN": "yes"}
    nvcc = fake_toolkit(tmp_path / "c9", "13.0", cudnn=9)
    note = cuda_setup.library_notes(str(nvcc), (13, 0))["cuDNN"]
    assert note.startswith("missing (cuDNN 9 found, Jittor 1.3.11 needs cuDNN 8")
    nvcc = fake_toolkit(tmp_path / "none", "13.0")
    assert cuda_setup.library_notes(str(nvcc), (13, 0))["cuDNN"].startswith("missing (Jittor")


def test_probe_success_writes_the_env_and_checks_once(tmp_path, monkeypatch, capsys):
    """The path of a working GPU, with the driver and the CUDA computation faked."""
    nvcc = fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    monkeypatch.setenv("FEWSHOT_NVCC", str(nvcc))
    monkeypatch.setenv("JITTOR_HOME", str(tmp_path / "home"))  # no cutt archive there
    monkeypatch.delenv("cc_path", raising=False)
    monkeypatch.setattr(cuda_setup, "listed_gpus", lambda: ["NVIDIA H200"])
    monkeypatch.setattr(cuda_setup, "driver_cuda", lambda: (13, 0))
    monkeypatch.setattr(cuda_setup.jittor_cuda13, "apply", lambda root: [])
    monkeypatch.setattr(cuda_setup.jittor_cuda13, "is_patched", lambda root: True)
    checks = []
    monkeypatch.setattr(cuda_setup, "check", lambda env, log: checks.append(env) or {})
    env_file = tmp_path / "cuda.env"
    assert cuda_setup.main(["cuda_setup.py", str(env_file)]) == 0
    assert cuda_setup.main(["cuda_setup.py", str(env_file)]) == 0
    assert len(checks) == 1, "the check runs again only when an input changed"
    assert checks[0]["nvcc_path"] == str(nvcc) and checks[0]["FEWSHOT_DEVICE"] == "cuda"
    text = env_file.read_text()
    for line in (f"export nvcc_path={nvcc}", "export use_cutlass=0", "export use_cutt=0"):
        assert line in text.splitlines()
    err = capsys.readouterr().err.splitlines()
    ready = "[setup] CUDA ready: NVIDIA H200, driver CUDA 13.0, nvcc 13.0, cuBLAS yes, cuDNN no"
    assert err.count(ready) == 2
    assert any(ln.startswith("[setup] warning: GPU used without cuDNN: missing") for ln in err)


# --- the CUDA 13 patch -------------------------------------------------------------------------


def jittor_sources() -> Path:
    return jittor_cuda13.jittor_dir()


def copy_patched_files(dest: Path) -> Path:
    """Copies of the files the patch edits, laid out as in the jittor package."""
    src = jittor_sources()
    if jittor_cuda13.is_patched(src):
        pytest.skip("this venv's Jittor is already patched; the test needs pristine sources")
    for rel, _ in jittor_cuda13.EDITS:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
    return dest


def test_cuda13_patch_is_idempotent_and_refuses_foreign_sources(tmp_path):
    root = copy_patched_files(tmp_path / "jittor")
    changed = jittor_cuda13.apply(root)
    assert sorted(changed) == sorted(rel for rel, _ in jittor_cuda13.EDITS + jittor_cuda13.CREATES)
    assert jittor_cuda13.is_patched(root)
    before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}
    assert jittor_cuda13.apply(root) == []
    assert before == {p: p.read_text() for p in root.rglob("*") if p.is_file()}
    helper = (root / "extern/cuda/inc/helper_cuda.h").read_text()
    assert "deviceProp.computeMode" not in helper.split("#else")[-1]
    # A Jittor whose sources differ is refused before anything is written.
    foreign = copy_patched_files(tmp_path / "foreign")
    cub_where = foreign / "extern/cuda/cub/ops/cub_where_op.cc"
    cub_where.write_text(cub_where.read_text().replace("cub::CountingInputIterator", "X"))
    pristine = {p: p.read_text() for p in foreign.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="cub_where_op.cc: expected 1 occurrence"):
        jittor_cuda13.apply(foreign)
    assert pristine == {p: p.read_text() for p in foreign.rglob("*") if p.is_file()}


def cuda13_nvcc() -> str:
    for nvcc in cuda_setup.nvcc_candidates():
        if cuda_setup.version_of(cuda_setup.run([nvcc, "--version"])) >= (13, 0):
            return nvcc
    pytest.skip("needs CUDA 13's nvcc")


def test_helper_cuda_compiles_against_cuda13_after_the_patch(tmp_path):
    """What broke Jittor's core build: helper_cuda.h read fields CUDA 13 removed."""
    nvcc = cuda13_nvcc()
    cuda_inc = Path(nvcc).parent.parent / "include"
    root = copy_patched_files(tmp_path / "jittor")
    src = tmp_path / "uses_helper_cuda.cc"
    src.write_text(
        "#include <cuda_runtime.h>\n#include <helper_cuda.h>\n"
        "int best() {\n"
        "  return gpuGetMaxGflopsDeviceId() + gpuDeviceInit(0) + findIntegratedGPU();\n}\n"
    )
    # Jittor compiles its core's .cc files with g++ and these flags (compiler.py).
    cmd = ["g++", "-std=c++14", "-fsyntax-only", "-DHAS_CUDA", "-DIS_CUDA", f"-I{cuda_inc}"]
    cmd += [f"-I{root / 'extern/cuda/inc'}", f"-I{jittor_sources() / 'extern/cuda/inc'}"]
    cmd += [f"-I{jittor_sources() / 'src'}", str(src)]
    before = subprocess.run(cmd, capture_output=True, text=True)
    assert before.returncode != 0 and "computeMode" in before.stderr
    jittor_cuda13.apply(root)
    after = subprocess.run(cmd, capture_output=True, text=True)
    assert after.returncode == 0, after.stderr[-3000:]


CUB_USES = r"""
// Every CUB/Thrust construct Jittor 1.3.11 uses on CUDA, as Jittor writes it, with the names
// CUDA 13 removed spelled through jt_cuda13_compat.h as the patched sources do.
#include <cub/cub.cuh>
#include <jt_cuda13_compat.h>
#include <thrust/device_ptr.h>
#include <thrust/execution_policy.h>
#include <thrust/iterator/reverse_iterator.h>
#include <thrust/scan.h>
#include <thrust/scatter.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/unique.h>
template <typename T> struct NonZeroOp {
  __host__ __device__ __forceinline__ bool operator()(const T& a) const { return a != T(0); }
};
__global__ void softmax_max(float* x, float* y) {  // other/code_softmax.py
  typedef cub::BlockReduce<float, 256> BlockReduce;
  __shared__ typename BlockReduce::TempStorage temp_storage;
  auto tmp = BlockReduce(temp_storage).Reduce(x[threadIdx.x], JT_CUB_MAX());
  if (threadIdx.x == 0) y[0] = tmp + BlockReduce(temp_storage).Sum(x[threadIdx.x]);
}
template <typename T> __device__ void CudaAtomicAddWithWarp(T* sum, T value) {  // depthwise_conv
  typedef cub::WarpReduce<T> WarpReduce;
  typename WarpReduce::TempStorage temp_storage;
  value = WarpReduce(temp_storage).Sum(value);
  if (JT_LANE_ID() == 0) atomicAdd(sum, value);
}
__global__ void depthwise_grad(float* s, float* v) { CudaAtomicAddWithWarp(s, v[threadIdx.x]); }
template <typename Tx, int N> __global__ void cumsum_block(Tx* x) {  // cub_cumsum_op.cc
  typedef cub::BlockScan<Tx, N> BlockScanT;
  __shared__ typename BlockScanT::TempStorage temp_storage;
  Tx v = x[threadIdx.x];
  BlockScanT(temp_storage).InclusiveSum(v, v);
  x[threadIdx.x] = v;
}
template __global__ void cumsum_block<float, 128>(float*);
void host_side(float* f, int* i, int* o, int n, void* tmp, size_t bytes, int* offs) {
  size_t s = 0;
  JT_COUNTING_ITERATOR(int) counting_itr(0);  // cub_where_op.cc
  JT_TRANSFORM_ITERATOR(bool, NonZeroOp<float>, float*) itr(f, NonZeroOp<float>());
  cub::DeviceSelect::Flagged(nullptr, s, counting_itr, itr, o, i, n);
  cub::KeyValuePair<int, float>* kv = nullptr;  // cub_arg_reduce_op.cc
  cub::DeviceSegmentedReduce::ArgMax(tmp, bytes, f, kv, n, offs, offs + 1);
  cub::DeviceSegmentedReduce::ArgMin(tmp, bytes, f, kv, n, offs, offs + 1);
  cub::DeviceSegmentedRadixSort::SortPairs(tmp, bytes, f, f, i, o, n, 1, offs, offs + 1);
  cub::DeviceSegmentedRadixSort::SortPairsDescending(tmp, bytes, f, f, i, o, n, 1, offs, offs + 1);
  cub::DeviceScan::InclusiveSum(tmp, bytes, f, f, n);  // cub_cumsum_op.cc
  auto xr = thrust::make_reverse_iterator(f + n);
  cub::DeviceScan::InclusiveSum(tmp, bytes, xr, thrust::make_reverse_iterator(f + n), n);
  cub::DeviceRadixSort::SortPairs(tmp, bytes, f, f, i, o, n);  // misc.py argsort, unique
  thrust::device_ptr<int> p = thrust::device_pointer_cast(i);
  thrust::sequence(p, p + n);
  thrust::sort(thrust::device, p, p + n, thrust::greater<int>());
  thrust::inclusive_scan(p, p + n, p);
  thrust::scatter(p, p + n, p, p);
  thrust::unique(p, p + n, thrust::equal_to<int>());
}
"""


@pytest.mark.slow
def test_cub_constructs_compile_with_cuda13_after_the_patch(tmp_path):
    """Jittor's CUB-using kernels are generated at run time on a GPU; these are their constructs."""
    nvcc = cuda13_nvcc()
    root = copy_patched_files(tmp_path / "jittor")
    jittor_cuda13.apply(root)
    src = tmp_path / "cub_uses.cu"
    src.write_text(CUB_USES)
    # compiler.py after the patch: C++17 for nvcc >= 13 (Jittor's own flags say C++14).
    compiler = (root / "compiler.py").read_text()
    assert 'nvcc_flags.replace("-std=c++14", "-std=c++17")' in compiler
    cmd = [nvcc, "-x", "cu", "-c", str(src), "-o", os.devnull, f"-I{root / 'extern/cuda/inc'}"]
    r = subprocess.run([*cmd, "-std=c++17"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r14 = subprocess.run([*cmd, "-std=c++14"], capture_output=True, text=True)
    assert r14.returncode != 0 and "requires at least C++17" in r14.stderr


@pytest.mark.slow
def test_jittor_cuda_core_builds_with_cuda13_after_the_patch(tmp_path):
    """Jittor's own build of its CUDA core (about 5 minutes on 2 cores), in a patched copy.

    Without a GPU it compiles and links the core, then stops when the core's first CUDA call
    finds no driver; that failure, and no compile error, is what this test expects.
    """
    netns_or_skip()
    if driver_loads():
        pytest.skip("with a driver the import goes further: scripts/setup.sh checks that")
    nvcc = cuda13_nvcc()
    site = tmp_path / "site"
    for pkg in ("jittor", "jittor_utils"):
        shutil.copytree(
            jittor_sources().parent / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__")
        )
    jittor_cuda13.apply(site / "jittor")
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(site), "JITTOR_HOME": str(home), "HOME": str(home)}
    env.update(nvcc_path=nvcc, use_cutt="0", use_cutlass="0", use_mkl="0", FIX_TORCH_ERROR="0")
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", "import jittor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = re.sub(r"\x1b\[[0-9;]*[mK]", "", r.stdout + r.stderr)
    assert " error: " not in out and "Run cmd failed" not in out, out[-5000:]
    cores = list(home.glob(".cache/jittor/**/cu13*/jittor_core*.so"))
    assert cores, out[-5000:]
    assert re.search(r"cudaErrorInsufficientDriver|cudaErrorNoDevice", out), out[-5000:]


# --- models.runtime ----------------------------------------------------------------------------


def test_runtime_logs_jittor_errors_and_keeps_the_device():
    code = r"""
import logging, os
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from models.runtime import jittor, device_record
jt = jittor("cpu")
os.environ["FEWSHOT_DEVICE"] = "auto"
jittor()  # keeps the device chosen first, as the model modules' import-time calls do
import jittor_utils
jittor_utils.LOG.i("Compiling jittor_core(1/151)")
jittor_utils.LOG.f("file libcudnn.so not found in ['/usr/local/cuda/lib64']\nsecond line")
print("REQUESTED", device_record()["requested"], device_record()["problems"])
"""
    # As a child of a process that set up Jittor already (log_silent inherited, and marked ours).
    env = {**os.environ, "log_silent": "1", "FEWSHOT_QUIET_JITTOR": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INFO models.runtime: Jittor 1.3.11.0 on the CPU (asked for cpu)" in r.stderr
    warn = "WARNING models.runtime: Jittor: file libcudnn.so not found in ['/usr/local/cuda/lib64']"
    assert warn in r.stderr.splitlines()
    assert "Compiling" not in r.stderr and "second line" not in r.stderr
    assert "REQUESTED cpu [\"file libcudnn.so not found in ['/usr/local/cuda/lib64']\"]" in r.stdout
