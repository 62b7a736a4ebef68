"""Package-level behaviour: what importing diffpolicy sets up."""

import os
import subprocess
import sys

import pytest

# Reads MKL's own reproducibility mode after a matrix product (2 = MKL_CBWR_AUTO, mkl_service.h); prints "n/a" for a
# torch built without MKL.
PROBE = """
import ctypes, os, torch
import diffpolicy
torch.randn(8, 8) @ torch.randn(8, 8)
try:
    get = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")).mkl_serv_cbwr_get
except (OSError, AttributeError):
    print(os.environ.get("MKL_CBWR"), "n/a")
else:
    print(os.environ.get("MKL_CBWR"), get(ctypes.c_int(1)))
"""


def probe(**env):
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_import_sets_mkl_cbwr_before_the_first_blas_call():
    value, mode = probe()
    assert value == "AUTO"
    if mode == "n/a":
        pytest.skip("torch without MKL symbols")
    assert mode == "2", f"MKL did not take MKL_CBWR=AUTO (mode {mode})"


def test_import_keeps_a_user_set_mkl_cbwr():
    value, mode = probe(MKL_CBWR="COMPATIBLE")
    assert value == "COMPATIBLE"
    if mode != "n/a":
        assert mode == "3"  # MKL_CBWR_COMPATIBLE
