"""The environment the setup script promises: Jittor works, numpy < 2, no network at import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest


def test_numpy_below_2():
    # Jittor 1.3.11 silently returns wrong values with numpy 2.
    assert int(np.__version__.split(".")[0]) < 2


def test_jittor_computes_on_cpu():
    from models.runtime import jittor

    jt = jittor("cpu")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose((jt.array(a) @ jt.array(a.T)).numpy(), a @ a.T)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = np.ones((2, 3, 3, 3), np.float32)
    y = jt.nn.conv2d(jt.array(x), jt.array(w), padding=1).numpy()
    # centre pixel of a 3x3 all-ones kernel = sum of the 3x3x3 neighbourhood
    np.testing.assert_allclose(y[0, 0, 4, 4], x[0, :, 3:6, 3:6].sum(), rtol=1e-5)


def test_oneDNN_linked_for_jittor():
    home = os.environ.get("JITTOR_HOME")
    if not home or not sys.platform.startswith("linux"):
        pytest.skip("JITTOR_HOME is set by scripts/env.sh on Linux")
    lib = os.path.join(home, ".cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp/lib/libmkldnn.so")
    assert os.path.exists(lib), "scripts/setup.sh should link Debian's oneDNN here"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_import_jittor_needs_no_network():
    # A private network namespace has no route anywhere: a download attempt would fail the import.
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    code = "from models.runtime import jittor; jt = jittor(); print('OK', jt.__version__)"
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK 1.3.11" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
