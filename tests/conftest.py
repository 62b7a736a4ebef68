import os

# Headless MuJoCo rendering (EGL on Mesa's llvmpipe on CPU machines) unless the caller chose a backend.
os.environ.setdefault("MUJOCO_GL", "egl")
