"""diffpolicy: diffusion and flow-matching policies for robot learning."""

import os

# Intel MKL (torch's CPU BLAS) runs the small matrix products of batch-1 inference, the U-Net's convolutions at
# horizon 16, 1.7-1.8x faster in its conditional-numerical-reproducibility mode on this project's AMD EPYC, and large
# products no slower (benchmarks/results/core.md, session 8). MKL reads the mode once, at its first call, hence here;
# a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"
