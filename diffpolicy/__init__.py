"""diffpolicy: diffusion and flow-matching policies for robot learning."""

from . import cpu_runtime

cpu_runtime.set_mkl_mode()
ALLOCATOR_TUNED = cpu_runtime.keep_freed_memory()

__version__ = "0.1.0"
