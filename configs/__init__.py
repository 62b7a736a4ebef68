"""Hydra configuration tree, shipped as package data (``pkg://diffpolicy.configs``)."""
