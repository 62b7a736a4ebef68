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


# mallinfo2 after a fresh 16 MiB block is taken and freed: mmapped bytes while held, heap bytes after the free
ALLOC_PROBE = """
import ctypes
import diffpolicy

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
p = libc.malloc(16 << 20)
held = libc.mallinfo2().hblkhd
libc.free(p)
print(diffpolicy.ALLOCATOR_TUNED, held >> 20, libc.mallinfo2().arena >> 20)
"""


def alloc_probe(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and "ALLOCATOR" not in k}
    out = subprocess.run([sys.executable, "-c", ALLOC_PROBE], env={**base, **env}, capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"no glibc mallinfo2 here: {out.stderr.strip().splitlines()[-1]}")
    tuned, mmapped_mib, heap_mib = out.stdout.split()
    return tuned == "True", int(mmapped_mib), int(heap_mib)


def test_import_makes_glibc_keep_freed_training_buffers():
    # glibc's default maps a fresh 16 MiB block separately and unmaps it on free (page faults at every reuse)
    tuned, mmapped_mib, heap_mib = alloc_probe()
    assert tuned and mmapped_mib == 0 and heap_mib >= 16, (tuned, mmapped_mib, heap_mib)


@pytest.mark.parametrize("env", [{"MALLOC_TOP_PAD_": "0"}, {"DIFFPOLICY_DEFAULT_ALLOCATOR": "1"}])
def test_import_keeps_a_user_configured_allocator(env):
    tuned, mmapped_mib, _ = alloc_probe(**env)
    assert not tuned and mmapped_mib == 16
