"""Optional ``torch.compile`` of the 1D U-Net; eager stays the default everywhere.

Inductor fuses each block's GroupNorm, FiLM, Mish and residual adds into a few C++ loops (gcc on CPU) and removes
the per-op Python dispatch that dominates small networks at batch 1. The first call per input shape compiles
(minutes on a 2-core CPU), so compile once per process and reuse. With ``freeze=True`` (inference only) the weights
become constants of the compiled graph, which lets inductor pre-pack convolution weights for oneDNN: compile after
loading the weights you will sample with; later weight updates are not seen. CUDA graphs (``mode="reduce-overhead"``)
only apply on a GPU.
"""

from __future__ import annotations

import torch

from diffpolicy.nets.unet1d import ConditionalUnet1D, ConditionedUnet

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


class CompiledUnet1D:
    """A compiled :class:`ConditionalUnet1D`: same call signature, same :meth:`conditioned` fast path.

    ``forward`` is compiled with autograd, so ``objective.loss(compiled, x0, cond)`` trains the wrapped ``net``'s
    parameters (its optimizer stays the one built on ``net.parameters()``).
    """

    def __init__(self, net: ConditionalUnet1D, mode: str = "default", freeze: bool = False):
        if not isinstance(net, ConditionalUnet1D):
            raise TypeError(f"compile_unet expects a ConditionalUnet1D, got {type(net).__name__}")
        if mode not in MODES:
            raise ValueError(f"unknown compile mode {mode!r}; expected one of {MODES}")
        if freeze and mode != "default":
            # torch.compile takes either a mode or explicit inductor options; freezing is such an option.
            raise ValueError(f"freeze=True uses inductor options and cannot be combined with mode={mode!r}")
        kwargs = {"options": {"freezing": True}} if freeze else {"mode": None if mode == "default" else mode}
        self.net, self.freeze = net, freeze
        self._forward = torch.compile(net.forward, **kwargs)
        self._trunk = torch.compile(net.forward_film, **kwargs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor | None = None,
                 local_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``t`` ``(B,)`` -> ``(B, T, D)``, as :meth:`ConditionalUnet1D.forward`."""
        return self._forward(x, t, global_cond, local_cond)

    def conditioned(self, global_cond: torch.Tensor | None = None, local_cond: torch.Tensor | None = None,
                    times: torch.Tensor | None = None) -> ConditionedUnet:
        """As :meth:`ConditionalUnet1D.conditioned`, with the network body compiled."""
        return ConditionedUnet(self.net, global_cond, local_cond, times, trunk=self._trunk)


def compile_unet(net: ConditionalUnet1D, mode: str = "default", freeze: bool = False) -> CompiledUnet1D:
    """Compile ``net`` (see the module docstring for ``mode`` and ``freeze``)."""
    return CompiledUnet1D(net, mode, freeze)
