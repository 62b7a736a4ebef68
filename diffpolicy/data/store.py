"""Opening, creating and atomically publishing zarr stores (v3 or v2; directory or zip).

A *store path* is either a directory (``*.zarr``) or a zip archive of one (``*.zip``, e.g. ``*.zarr.zip``). Zip
stores are read-only here: to produce one, a directory store is written beside the target and packed into the
archive at the end (zarr chunks are already compressed, so the archive stores them uncompressed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from diffpolicy.data.errors import DatasetError, UnreadableStoreError

# Rows per chunk are chosen so one chunk holds about this many uncompressed bytes: large enough that a whole-array
# load is a few hundred decompressions (zarr costs ~0.5 ms per chunk request), small enough that a chunk-cached
# random window read does not decompress megabytes for a handful of frames.
CHUNK_TARGET_BYTES = 2 << 20


def is_zip_path(path: str | os.PathLike) -> bool:
    return str(path).endswith(".zip")


def chunk_rows(shape: tuple[int, ...], dtype: np.dtype, target_bytes: int = CHUNK_TARGET_BYTES) -> int:
    """Number of leading-axis rows per chunk for an array ``(N, *event)`` of ``dtype``."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(max(1, target_bytes // max(row_bytes, 1)))


def default_compressors(dtype: np.dtype) -> list[BloscCodec]:
    """LZ4 in Blosc: decompresses at several GB/s, which keeps loading and chunk-cached reads cheap; byte shuffle
    helps float state/action arrays, while uint8 images have nothing to shuffle."""
    shuffle = "noshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle)]


def open_group(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open the root group at ``path``; any failure is a :class:`DatasetError` naming the path (an
    :class:`UnreadableStoreError` when the path is missing, not a zarr store, or its metadata cannot be read).

    ``mode`` is ``"r"`` or, for directory stores only, ``"r+"`` (append).
    """
    p = Path(path)
    if not p.exists():
        raise UnreadableStoreError(p, None, "no such file or directory")
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise UnreadableStoreError(p, None, "not a zarr store: a regular file that is not a zip archive")
        if mode != "r":
            raise DatasetError(p, None, "zip stores are read-only; write a directory store and pack it")
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
        if not names & {"zarr.json", ".zgroup"}:
            raise UnreadableStoreError(p, None, "not a zarr store: the zip has no zarr.json (v3) or .zgroup (v2) at "
                                                "its root")
        store = zarr.storage.ZipStore(p, mode="r")
    else:
        if not ((p / "zarr.json").exists() or (p / ".zgroup").exists()):
            raise UnreadableStoreError(p, None, "not a zarr store: the directory has no zarr.json (v3) or .zgroup "
                                                "(v2)")
        store = zarr.storage.LocalStore(p, read_only=(mode == "r"))
    try:
        return zarr.open_group(store, mode=mode)
    except Exception as exc:  # zarr raises many types for corrupt metadata; report them all the same way
        raise UnreadableStoreError(p, None, f"cannot open as a zarr group ({type(exc).__name__}: {exc})") from exc


def pack_zip(src_dir: Path, dst: Path) -> None:
    """Write the directory store ``src_dir`` as a zip store ``dst`` (entries relative to the store root)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for root, _, files in os.walk(src_dir):
            for name in sorted(files):
                full = Path(root) / name
                zf.write(full, full.relative_to(src_dir).as_posix())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_store(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success publish it under ``target``.

    The directory becomes ``target`` by a rename (or is packed into ``target`` when it ends in ``.zip``), so an
    interrupted writer never leaves a partial store under the final name. An existing ``target`` is replaced only
    with ``overwrite=True`` (it is renamed aside first and deleted once the new store is in place).
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise DatasetError(target, None, "already exists; pass overwrite=true to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp_dir = target.parent / f".{target.name}.tmp-{tag}"
    try:
        yield tmp_dir
        if is_zip_path(target):
            tmp_zip = target.parent / f".{target.name}.tmp-{tag}.zip"
            try:
                pack_zip(tmp_dir, tmp_zip)
                _publish(tmp_zip, target, tag)
            finally:
                _remove(tmp_zip)
        else:
            _publish(tmp_dir, target, tag)
    finally:
        _remove(tmp_dir)


def _publish(src: Path, target: Path, tag: str) -> None:
    old = target.parent / f".{target.name}.old-{tag}"
    if target.exists():
        target.rename(old)
    src.rename(target)
    _remove(old)
