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
