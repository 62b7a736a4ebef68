"""Exported controllers: a checkpoint's whole chunk function as one ONNX or torch.export artifact.

- :mod:`.chunk`: :class:`ChunkFunction`, the module that is exported (normalise, encode, sample from a noise input,
  unnormalise; the policy's own ``encode`` and ``sample_chunk``);
- :mod:`.artifact`: :func:`export_checkpoint` writes the artifact and checks it against eager PyTorch;
  :func:`load_artifact` runs it again as an :class:`ExportedPolicy`, which
  :meth:`Controller.from_artifact <diffpolicy.control.Controller.from_artifact>` drives.

``diffpolicy-export checkpoint=... sampler=euler steps=8 format=onnx`` is the command line.
"""

from .artifact import ExportedPolicy, export_checkpoint, load_artifact
from .chunk import ChunkFunction, NotExportable

__all__ = ["ChunkFunction", "NotExportable", "ExportedPolicy", "export_checkpoint", "load_artifact"]
