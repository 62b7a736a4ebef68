"""Package-level behaviour: importing diffpolicy changes nothing process-wide; tune_process is the opt-in."""

import os
import subprocess
import sys

import pytest

MODULES = ["diffpolicy", "diffpolicy.accel", "diffpolicy.control", "diffpolicy.control.controller",
           "diffpolicy.policy.factory", "diffpolicy.training.run", "diffpolicy.eval.rollout", "diffpolicy.data.dataset",
           "diffpolicy.imagegen.model", "diffpolicy.cli.train", "diffpolicy.cli.eval", "diffpolicy.envs"]

# Environment, torch threads and glibc's treatment of a fresh 16 MiB block (mmapped while held by glibc's default)
# before and after importing every module above.
IMPORT_PROBE = """
import ctypes, importlib, os, sys
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

def mmapped_block():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(16 << 20)
    held = libc.mallinfo2().hblkhd - before
    libc.free(p)
    return held >> 20

# the dependencies' own import-time settings (gymnasium: PYGAME_HIDE_SUPPORT_PROMPT, diffusers:
# TORCHINDUCTOR_CACHE_DIR) are theirs: the snapshot is taken after importing them
import diffusers, gymnasium, hydra, mujoco, zarr  # noqa: E401
env, threads = dict(os.environ), torch.get_num_threads()
for name in sys.argv[1:]:
    importlib.import_module(name)
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
print(",".join(changed) or "-", torch.get_num_threads() == threads, mmapped_block())
"""


def test_importing_any_part_changes_nothing_process_wide(tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR" and not k.startswith("MALLOC_")}
    # cwd: the installed package (a source checkout's top level has no diffpolicy/envs; pip maps it)
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *MODULES], env=base, capture_output=True, text=True,
                         cwd=tmp_path)
    if out.returncode and "mallinfo2" in out.stderr:
        pytest.skip("no glibc mallinfo2 here")
    assert out.returncode == 0, out.stderr[-2000:]
    changed, same_threads, mmapped_mib = out.stdout.split()
    assert changed == "-" and same_threads == "True"
    assert int(mmapped_mib) == 16  # glibc's default: the allocator was left alone


# Reads MKL's own reproducibility mode after a matrix product (2 = MKL_CBWR_AUTO, mkl_service.h); prints "n/a" for a
# torch built without MKL. tune_process runs after torch is imported, before its first BLAS call, as the CLIs do.
MKL_PROBE = """
import ctypes, os, torch
from diffpolicy.accel import tune_process
done = tune_process()
torch.randn(8, 8) @ torch.randn(8, 8)
try:
    get = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")).mkl_serv_cbwr_get
except (OSError, AttributeError):
    print(os.environ.get("MKL_CBWR"), "n/a", done["mkl_cbwr"])
else:
    print(os.environ.get("MKL_CBWR"), get(ctypes.c_int(1)), done["mkl_cbwr"])
"""


def mkl_probe(**env):
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", MKL_PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_tune_process_sets_mkl_cbwr_before_the_first_blas_call():
    value, mode, done = mkl_probe()
    assert value == "AUTO" and done == "True"
    if mode == "n/a":
        pytest.skip("torch without MKL symbols")
    assert mode == "2", f"MKL did not take MKL_CBWR=AUTO (mode {mode})"


def test_tune_process_keeps_a_user_set_mkl_cbwr():
    value, mode, done = mkl_probe(MKL_CBWR="COMPATIBLE")
    assert value == "COMPATIBLE" and done == "False"
    if mode != "n/a":
        assert mode == "3"  # MKL_CBWR_COMPATIBLE


# mallinfo2 after tune_process, with a fresh 16 MiB block taken and freed: mmapped bytes while held, heap bytes after
ALLOC_PROBE = """
import ctypes
from diffpolicy.accel import tune_process

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

tuned = tune_process()["allocator"]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd  # torch's own mapped blocks
p = libc.malloc(16 << 20)
held = libc.mallinfo2().hblkhd - before
libc.free(p)
print(tuned, held >> 20, libc.mallinfo2().arena >> 20)
"""


def alloc_probe(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and "ALLOCATOR" not in k}
    out = subprocess.run([sys.executable, "-c", ALLOC_PROBE], env={**base, **env}, capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"no glibc mallinfo2 here: {out.stderr.strip().splitlines()[-1]}")
    tuned, mmapped_mib, heap_mib = out.stdout.split()
    return tuned == "True", int(mmapped_mib), int(heap_mib)


def test_tune_process_makes_glibc_keep_freed_training_buffers():
    # glibc's default maps a fresh 16 MiB block separately and unmaps it on free (page faults at every reuse)
    tuned, mmapped_mib, heap_mib = alloc_probe()
    assert tuned and mmapped_mib == 0 and heap_mib >= 16, (tuned, mmapped_mib, heap_mib)


@pytest.mark.parametrize("env", [{"MALLOC_TOP_PAD_": "0"}, {"DIFFPOLICY_DEFAULT_ALLOCATOR": "1"}])
def test_tune_process_keeps_a_user_configured_allocator(env):
    tuned, mmapped_mib, _ = alloc_probe(**env)
    assert not tuned and mmapped_mib == 16
