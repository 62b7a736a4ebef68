"""MuJoCo helpers shared by the tasks: models compiled from package data, and reusable offscreen renderers."""

from __future__ import annotations

from importlib import resources

import mujoco
import numpy as np


def load_model(name: str) -> mujoco.MjModel:
    """Compile ``envs/assets/<name>`` from the installed package (works from a wheel, not only from the repo)."""
    xml = resources.files("diffpolicy.envs").joinpath("assets", name).read_text()
    return mujoco.MjModel.from_xml_string(xml)


class CameraSet:
    """One reusable ``mujoco.Renderer`` per (camera, size): renderers are expensive to create, cheap to reuse."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        self._renderers: dict[tuple[str, int], mujoco.Renderer] = {}

    def render(self, data: mujoco.MjData, camera: str, size: int) -> np.ndarray:
        """Render ``camera`` as a fresh ``(size, size, 3)`` uint8 array."""
        key = (camera, size)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.model, height=size, width=size)
        renderer = self._renderers[key]
        renderer.update_scene(data, camera=camera)
        return renderer.render()

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
