"""Command-line conveniences for task configs that live outside the installed package.

- ``task=/path/to/my_task.yaml`` (any path to a ``.yaml`` / ``.yml`` file): hydra config groups only take names, so
  the file is linked into a temporary ``task/`` group directory added to hydra's search path, and the override
  becomes ``task=my_task``. (hydra's own ``--config-dir DIR`` with ``DIR/task/my_task.yaml`` and ``task=my_task``
  works too.)
- ``task.env_kwargs.<key>=...``, ``task.obs_spec.<key>=...``, ``task.success.<key>=...``: open sections, where a
  key the task file lacks is accepted (hydra's struct mode would refuse it without ``+``); they become ``++...``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

OPEN_SECTIONS = ("task.env_kwargs.", "task.obs_spec.", "task.success.")


def task_args(argv: list[str]) -> list[str]:
    """``argv`` (without the program name) rewritten as described in the module docstring."""
    out, search = [], None
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key == "task" and value.endswith((".yaml", ".yml")):
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise SystemExit(f"task={value}: no such task file")
            search = Path(tempfile.mkdtemp(prefix="diffpolicy_task_"))
            atexit.register(shutil.rmtree, search, ignore_errors=True)
            (search / "task").mkdir()
            (search / "task" / path.name).symlink_to(path)
            out.append(f"task={path.stem}")
        elif eq and key.startswith(OPEN_SECTIONS):
            out.append(f"++{arg}")
        else:
            out.append(arg)
    if search is not None:
        out.append(f"hydra.searchpath=[file://{search}]")
    return out
