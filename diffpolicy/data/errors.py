"""The one error type of the dataset layer: every message names the store, the key and what is wrong."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset (zarr store) that cannot be used as asked.

    ``str(err)`` reads ``"<store>: <key>: <problem>"`` so a user can find the offending array without a traceback;
    ``err.store``, ``err.key`` and ``err.problem`` carry the parts for programs.
    """

    def __init__(self, store: object, key: str | None, problem: str):
        self.store = str(store)
        self.key = key
        self.problem = problem
        where = f"{self.store}: {key}" if key else self.store
        super().__init__(f"{where}: {problem}")


class UnreadableStoreError(DatasetError):
    """The store cannot be read at all: the path is missing, is not a zarr store, or its metadata is unreadable.

    ``diffpolicy-dataset validate`` exits with status 2 on this error (1 for problems found in a readable store).
    """


class ChunkError(DatasetError):
    """Chunks of one array are missing from the store or cannot be decoded; ``err.chunks`` lists their keys
    (relative to the array: ``c/0/0`` for zarr v3, ``0.0`` for v2)."""

    def __init__(self, store: object, key: str | None, chunks: list[str], problem: str):
        self.chunks = list(chunks)
        super().__init__(store, key, problem)
