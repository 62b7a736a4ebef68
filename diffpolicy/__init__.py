"""diffpolicy: diffusion and flow-matching policies for robot learning.

Importing it changes nothing process-wide; the CLIs opt in to CPU runtime tuning with
:func:`diffpolicy.accel.tune_process`.
"""

__version__ = "0.1.0"
