"""Demonstration datasets: zarr replay buffers, training windows, statistics and collection.

Submodules are imported explicitly (``from diffpolicy.data.dataset import WindowDataset``) so that the light ones
(``replay_buffer``, ``collect``) load without torch, e.g. in collection worker processes.
"""
