"""A task config's environment: imports, construction, success signal.

A task config (``configs/task/*.yaml``, or any mapping with the same keys) names a gymnasium environment. This module
turns the environment-related keys into objects, the same way for collection, evaluation and the controller:

- ``imports`` (default ``["diffpolicy.envs"]``): modules whose import registers ``env_id`` with gymnasium. An id of
  the form ``"package.module:EnvName-v0"`` also imports ``package.module``  (:func:`import_task_modules`);
- ``env_id``, ``env_kwargs`` and ``wrappers`` (``[{wrapper: "package.module:Class", kwargs: {...}}, ...]``, applied
  in order, innermost first) build the env (:func:`make_env`);
- ``success`` says where an episode's success comes from (:class:`SuccessSignal`): ``{info_key: NAME}`` (default
  ``is_success``), ``{termination: true}`` or ``{reward_at_least: X}``.

:func:`flatten_obs` and :func:`flat_obs_shapes` give an observation (space) the flat ``{key: array}`` form that is
stored in a dataset: a ``Box`` becomes ``{"state": ...}``, nested ``Dict`` keys are joined by ``/``.

Only gymnasium and numpy are needed (no torch), so collection workers can use this module.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

DEFAULT_IMPORTS = ("diffpolicy.envs",)
DEFAULT_SUCCESS = {"info_key": "is_success"}
SUCCESS_FORMS = ("{info_key: <name>}  (success when info[<name>] is truthy at any step)",
                 "{termination: true}  (success when the episode ends by `terminated`, not by `truncated`)",
                 "{reward_at_least: <number>}  (success when a step's reward reaches the number)")


class TaskError(ValueError):
    """A task config whose environment section cannot be used; the message names the task and what is wrong."""


def task_name(task: Mapping[str, Any]) -> str:
    return str(task.get("name") or "<unnamed task>")


def _plain(value: Any) -> Any:
    """Mappings to dicts and other (non-string) sequences to lists, tuples kept, recursively (e.g. an OmegaConf
    ``DictConfig``)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------------- imports


def import_task_modules(task: Mapping[str, Any]) -> list[str]:
    """Import the modules that register the task's env: ``task["imports"]`` (default ``["diffpolicy.envs"]``) and,
    for an ``env_id`` ``"package.module:EnvName-v0"``, ``package.module``. Returns the module names, in order.

    A module that fails to import raises :class:`ImportError` naming the task, the module and the original error.
    """
    imports = task.get("imports") or DEFAULT_IMPORTS
    if isinstance(imports, str):
        imports = [imports]
    modules = [str(m) for m in imports]
    env_id = str(task.get("env_id") or "")
    if ":" in env_id:
        module = env_id.split(":", 1)[0]
        if module and module not in modules:
            modules.append(module)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ImportError(f"task {task_name(task)!r}: cannot import module {module!r} (needed to register env "
                              f"{env_id!r}): {type(e).__name__}: {e}") from e
    return modules


# ------------------------------------------------------------------------------------------------------------- env


def make_env(task: Mapping[str, Any], render_mode: str | None = None, **overrides: Any):
    """The task's env: imports (:func:`import_task_modules`), ``gym.make(env_id, render_mode=...,
    **{**env_kwargs, **overrides})``, then ``task["wrappers"]`` applied in order.

    ``render_mode`` given here wins over a ``render_mode`` in ``env_kwargs`` (a task whose wrappers need frames,
    e.g. ``AddRenderObservation``, sets ``env_kwargs: {render_mode: rgb_array}``). An unknown env id raises
    :class:`TaskError` naming the id, the task and the registered ids closest to it.
    """
    import gymnasium as gym

    if "env_id" not in task:
        raise TaskError(f"task {task_name(task)!r}: no env_id")
    env_id = str(task["env_id"])
    modules = import_task_modules(task)
    _check_registered(env_id, task, modules)
    kwargs = {**_plain(task.get("env_kwargs") or {}), **overrides}
    mode = kwargs.pop("render_mode", None)
    if render_mode is not None:
        mode = render_mode
    if mode is not None:  # only when asked: envs that take no render_mode are made without one
        kwargs["render_mode"] = mode
    env = gym.make(env_id, **kwargs)
    try:
        for wrapper, wrapper_kwargs in wrapper_specs(task):
            env = wrapper(env, **wrapper_kwargs)
    except BaseException:
        env.close()
        raise
    return env


def _check_registered(env_id: str, task: Mapping[str, Any], modules: Sequence[str]) -> None:
    """Raise :class:`TaskError` unless gymnasium can resolve ``env_id`` (as ``gym.make`` does: an optional
    ``module:`` prefix, and an unversioned id means the latest version)."""
    import gymnasium as gym
    from gymnasium.envs.registration import find_highest_version, parse_env_id

    name = env_id.split(":", 1)[-1]
    if name in gym.registry:
        return
    try:
        ns, base, version = parse_env_id(name)
        if version is None and find_highest_version(ns, base) is not None:
            return
        gym.spec(name)
        detail = ""
    except gym.error.Error as e:
        detail = f"; gymnasium says: {e}"
    close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.6)
    hint = f"close matches: {close}" if close else "no close match among the registered ids"
    raise TaskError(f"task {task_name(task)!r}: unknown env id {env_id!r} ({hint}; after importing "
                    f"{list(modules)}{detail})")


def wrapper_specs(task: Mapping[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """``task["wrappers"]`` as ``[(wrapper class, kwargs), ...]`` in application order (checked, classes imported).

    Each entry is ``{wrapper: "package.module:Class", kwargs: {...}}`` (``kwargs`` optional) or the bare string.
    """
    specs = task.get("wrappers") or []
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence):
        raise TaskError(f"task {task_name(task)!r}: wrappers must be a list of {{wrapper: 'module:Class', "
                        f"kwargs: {{...}}}}, got {specs!r}")
    out = []
    for i, spec in enumerate(specs):
        where = f"task {task_name(task)!r}: wrappers[{i}]"
        if isinstance(spec, str):
            spec = {"wrapper": spec}
        if not isinstance(spec, Mapping) or "wrapper" not in spec or set(spec) - {"wrapper", "kwargs"}:
            raise TaskError(f"{where}: expected {{wrapper: 'package.module:Class', kwargs: {{...}}}}, got {spec!r}")
        path, kwargs = spec["wrapper"], spec.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise TaskError(f"{where}: kwargs must be a mapping, got {kwargs!r}")
        module, _, attr = str(path).partition(":")
        if not module or not attr:
            raise TaskError(f"{where}: wrapper must read 'package.module:Class', got {path!r}")
        try:
            wrapper = getattr(importlib.import_module(module), attr)
        except Exception as e:
            raise ImportError(f"{where}: cannot load wrapper {path!r}: {type(e).__name__}: {e}") from e
        out.append((wrapper, _plain(kwargs)))
    return out


# --------------------------------------------------------------------------------------------------------- success


@dataclass(frozen=True)
class SuccessSignal:
    """Where an episode's success comes from; exactly one field is set (see :meth:`from_config`).

    An episode succeeds if :meth:`step` is true at any of its steps.
    """

    info_key: str | None = None
    termination: bool = False
    reward_at_least: float | None = None

    def __post_init__(self):
        n_set = (self.info_key is not None) + bool(self.termination) + (self.reward_at_least is not None)
        if n_set != 1:
            raise TaskError(f"a success signal needs exactly one of info_key, termination, reward_at_least; got "
                            f"{self}")

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> SuccessSignal:
        """The signal of a task config's ``success`` section (default ``{info_key: is_success}``)."""
        try:
            return cls.from_config(task.get("success"))
        except TaskError as e:
            raise TaskError(f"task {task_name(task)!r}: {e}") from None

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> SuccessSignal:
        """``None`` (the default), ``{info_key: NAME}``, ``{termination: true}`` or ``{reward_at_least: X}``."""
        if section is None:
            section = DEFAULT_SUCCESS
        forms = "; ".join(SUCCESS_FORMS)
        if not isinstance(section, Mapping) or len(section) != 1:
            raise TaskError(f"success must be exactly one of: {forms}; got {_plain(section)!r}")
        (key, value), = section.items()
        if key == "info_key":
            if not isinstance(value, str) or not value:
                raise TaskError(f"success.info_key must be a non-empty string (the info key), got {value!r}")
            return cls(info_key=value)
        if key == "termination":
            if value is not True:
                raise TaskError(f"success.termination must be true (for another signal use one of: {forms}), "
                                f"got {value!r}")
            return cls(termination=True)
        if key == "reward_at_least":
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(value):
                raise TaskError(f"success.reward_at_least must be a finite number, got {value!r}")
            return cls(reward_at_least=float(value))
        raise TaskError(f"unknown success form {key!r}; success must be exactly one of: {forms}")

    def step(self, reward: float, terminated: bool, truncated: bool, info: Mapping[str, Any]) -> bool:
        """Whether this step counts as success (the arguments are those of ``env.step``'s result).

        ``termination``: true when ``terminated`` (also if the time limit truncates on the same step, since the
        env did reach its terminal state).
        """
        if self.info_key is not None:
            value = info.get(self.info_key, False)
            return bool(value.any()) if isinstance(value, np.ndarray) else bool(value)
        if self.termination:
            return bool(terminated)
        return float(reward) >= self.reward_at_least

    def describe(self) -> str:
        """A short text for summaries: ``info['is_success']``, ``termination`` or ``reward >= 0.9``."""
        if self.info_key is not None:
            return f"info[{self.info_key!r}]"
        if self.termination:
            return "termination"
        return f"reward >= {self.reward_at_least:g}"

    def as_config(self) -> dict[str, Any]:
        """The ``success`` section that builds this signal (e.g. to store in a summary)."""
        if self.info_key is not None:
            return {"info_key": self.info_key}
        if self.termination:
            return {"termination": True}
        return {"reward_at_least": self.reward_at_least}


# ----------------------------------------------------------------------------------------------------- observations


def flatten_obs(obs: Any, box_key: str = "state") -> dict[str, np.ndarray]:
    """One observation as ``{key: array}``: a ``Box`` observation is ``{box_key: obs}``; a ``Dict`` one is flattened,
    nested keys joined by ``/`` (``{"robot": {"qpos": q}}`` -> ``{"robot/qpos": q}``)."""
    if not isinstance(obs, Mapping):
        return {box_key: _array(obs, box_key)}
    out: dict[str, np.ndarray] = {}
    _flatten_into(obs, "", out)
    return out


def _flatten_into(obs: Mapping[str, Any], prefix: str, out: dict[str, np.ndarray]) -> None:
    for key, value in obs.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten_into(value, name + "/", out)
            continue
        if name in out:
            raise ValueError(f"observation key {name!r} occurs twice once nested keys are joined by '/'")
        out[name] = _array(value, name)


def _array(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"observation {name!r} is not an array ({type(value).__name__}); only Box and (nested) "
                        "Dict observations can be flattened")
    return arr


def flat_obs_shapes(space: Any, box_key: str = "state") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of an observation space, keyed as :func:`flatten_obs` keys its observations.

    A ``Box`` is ``{box_key: ...}``; a ``Dict`` (nested too) is flattened with ``/``; any other space (``Discrete``,
    ``Tuple``, ...) is a ``TypeError`` naming it.
    """
    from gymnasium import spaces

    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def visit(sp: Any, name: str | None) -> None:
        if isinstance(sp, spaces.Box):
            key = box_key if name is None else name
            if key in out:
                raise ValueError(f"observation key {key!r} occurs twice once nested keys are joined by '/'")
            out[key] = (tuple(sp.shape), np.dtype(sp.dtype))
        elif isinstance(sp, spaces.Dict):
            for key, sub in sp.spaces.items():
                visit(sub, key if name is None else f"{name}/{key}")
        else:
            where = "the observation space" if name is None else f"observation {name!r}"
            raise TypeError(f"{where} is {sp!r}: only Box and (nested) Dict spaces are supported")

    visit(space, None)
    return out
