"""Checkpoints as directories that load without unpickling.

Layout of ``<run>/checkpoints/step_<N>/``::

    <name>.safetensors   one per tensor group (e.g. model, ema)
    config.yaml          the resolved run configuration
    train_state.pt       optimiser/scheduler state, step and RNG state: plain tensors and numbers only,
                         loadable with ``torch.load(weights_only=True)``

A checkpoint is written to a temporary directory, its files and the directory are fsynced, it is renamed into place
(and the parent directory fsynced), then ``checkpoints/latest`` (a one-line text file) is replaced atomically and
durably: an interruption or a power loss never leaves a half-written checkpoint behind a name. A failed write (e.g. a
full disk) removes its temporary directory and leaves the previous checkpoint and ``latest`` as they were.
Pruning never removes the newest checkpoint or the one ``latest`` names; :func:`remove_stale_temporaries` clears
what a killed save left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml
from safetensors.torch import load_file, save_file

LATEST = "latest"


TMP_PREFIX = ".tmp_step_"


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (same suffix), flushed to disk, then renamed over
    ``path``: readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _atomic_write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporary checkpoint directories and ``latest`` files a killed save left in ``root``."""
    root, removed = Path(root), []
    for p in [*root.glob(f"{TMP_PREFIX}*"), *root.glob(f".{LATEST}.*")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def save_checkpoint(root: str | Path, step: int, tensors: Mapping[str, Mapping[str, torch.Tensor]],
                    config: Mapping[str, Any], train_state: Mapping[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``root/step_<step>`` atomically, point ``root/latest`` at it, and keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{TMP_PREFIX}{step:08d}_"))
    try:
        for name, state in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp / f"{name}.safetensors")
        (tmp / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        if train_state is not None:
            torch.save(dict(train_state), tmp / "train_state.pt")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"writing checkpoint {final} failed ({e.strerror or e}); the previous checkpoint "
                                   f"{_latest_name(root)} is untouched") from e
        raise
    _atomic_write_text(root / LATEST, final.name + "\n")
    if keep > 0:  # by name, newest last; the one just written (which latest now names) is never removed
        for old in sorted(root.glob("step_*"))[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _latest_name(root: Path) -> str | None:
    latest = root / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a ``checkpoints/`` root, or a run directory containing one."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if (root / LATEST).is_file():
            return root / (root / LATEST).read_text().strip()
    if (path / "config.yaml").is_file():
        return path
    raise FileNotFoundError(f"{path}: not a checkpoint (no config.yaml) and no checkpoints/latest below it")


def load_tensors(ckpt: str | Path, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(ckpt) / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} has no {name}.safetensors")
    return load_file(path, device=str(device))


def load_config(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} has no config.yaml")
    return yaml.safe_load(path.read_text())


def load_train_state(ckpt: str | Path) -> dict:
    return torch.load(Path(ckpt) / "train_state.pt", map_location="cpu", weights_only=True)
