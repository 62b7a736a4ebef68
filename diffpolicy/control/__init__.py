"""Receding-horizon control of a trained policy in a fixed-rate loop: :class:`Controller` and its wall-clock harness."""

from .controller import Controller

__all__ = ["Controller"]
