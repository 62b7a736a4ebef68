"""diffpolicy.data.tasks: a task config's imports, env construction (wrappers), success signal and flat observations."""

import importlib
import sys
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium import spaces

from diffpolicy.data.tasks import (SuccessSignal, TaskError, flat_obs_shapes, flatten_obs, import_task_modules,
                                   make_env, wrapper_specs)

# A tiny env module, written to a temporary file: importing it registers ENV_NAME (a 1-D walk that terminates past
# x >= 1 and reports info["reached"]); ``size`` is a constructor keyword, to check env_kwargs and overrides.
TINY_ENV = '''
import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import register

IMPORTED = True


class Tiny(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size=2, render_mode=None):
        self.size, self.render_mode = size, render_mode
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.zeros(self.size, np.float32), {}

    def step(self, action):
        self.x += float(action[0])
        reached = self.x >= 1.0
        return np.full(self.size, self.x, np.float32), self.x, reached, False, {"reached": reached}

    def render(self):
        return np.zeros((4, 6, 3), np.uint8)


register(id="ENV_NAME", entry_point=__name__ + ":Tiny", max_episode_steps=10)
'''


@pytest.fixture
def tiny_module(tmp_path, monkeypatch):
    """``make(env_name) -> module name``: writes and puts on sys.path a fresh module registering ``env_name``; the
    modules and registry entries are removed afterwards."""
    made = []

    def make(env_name: str, source: str = TINY_ENV) -> str:
        name = f"tiny_env_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source.replace("ENV_NAME", env_name))
        made.append((name, env_name))
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name, env_name in made:
        sys.modules.pop(name, None)
        gym.registry.pop(env_name, None)


def run_signal(signal: SuccessSignal, steps) -> list[bool]:
    return [signal.step(*s) for s in steps]


# ------------------------------------------------------------------------------------------------------------ success


def test_default_success_is_info_is_success():
    signal = SuccessSignal.from_task({"name": "t"})
    assert signal == SuccessSignal(info_key="is_success")
    assert signal.describe() == "info['is_success']"
    steps = [(0.0, False, False, {}), (0.0, False, False, {"is_success": False}), (1.0, False, False,
             {"is_success": np.bool_(True)}), (0.0, False, True, {"is_success": 0})]
    assert run_signal(signal, steps) == [False, False, True, False]


def test_success_from_any_info_key():
    signal = SuccessSignal.from_task({"success": {"info_key": "reached"}})
    assert signal.describe() == "info['reached']"
    steps = [(5.0, False, False, {"is_success": True}), (0.0, False, False, {"reached": np.array([False, True])}),
             (0.0, True, False, {"reached": 0.0})]
    assert run_signal(signal, steps) == [False, True, False]  # another key does not count, reward neither


def test_success_by_termination():
    signal = SuccessSignal.from_task({"success": {"termination": True}})
    assert signal.describe() == "termination"
    assert signal.as_config() == {"termination": True}
    # A run cut by the time limit never succeeds, whatever the info or reward say ...
    assert not any(run_signal(signal, [(100.0, False, False, {"is_success": True})] * 3 + [(0.0, False, True, {})]))
    # ... one that ends by termination does (also when the limit truncates on that same step).
    assert run_signal(signal, [(0.0, False, False, {}), (0.0, True, False, {})]) == [False, True]
    assert signal.step(0.0, True, True, {})


def test_success_by_reward_threshold():
    signal = SuccessSignal.from_task({"success": {"reward_at_least": 0.9}})
    assert signal.describe() == "reward >= 0.9"
    assert run_signal(signal, [(0.5, False, False, {"is_success": True}), (0.9, False, False, {}),
                               (np.float64(1.2), False, True, {})]) == [False, True, True]
    negative = SuccessSignal.from_config({"reward_at_least": -0.015})
    assert negative.describe() == "reward >= -0.015"
    assert run_signal(negative, [(-0.02, False, False, {}), (-0.01, False, False, {})]) == [False, True]
    assert SuccessSignal.from_config(negative.as_config()) == negative


def test_success_signal_is_a_frozen_dataclass():
    signal = SuccessSignal(termination=True)
    with pytest.raises(AttributeError):
        signal.termination = False
    with pytest.raises(TaskError, match="exactly one"):
        SuccessSignal(info_key="a", reward_at_least=1.0)
    with pytest.raises(TaskError, match="exactly one"):
        SuccessSignal()


@pytest.mark.parametrize("section, problem", [
    ({}, "exactly one of"),
    ({"info_key": "a", "termination": True}, "exactly one of"),
    ("is_success", "exactly one of"),
    ({"termination": False}, "must be true"),
    ({"termination": "yes"}, "must be true"),
    ({"info_key": ""}, "non-empty string"),
    ({"info_key": 3}, "non-empty string"),
    ({"reward_at_least": "high"}, "finite number"),
    ({"reward_at_least": True}, "finite number"),
    ({"reward_at_least": float("nan")}, "finite number"),
    ({"reward": 1.0}, "unknown success form 'reward'"),
])
def test_malformed_success_is_a_clear_error(section, problem):
    with pytest.raises(TaskError, match=problem) as err:
        SuccessSignal.from_task({"name": "my_task", "success": section})
    message = str(err.value)
    assert message.startswith("task 'my_task': ")
    if "exactly one of" in problem or "unknown" in problem:  # lists the accepted forms
        assert all(form in message for form in ("info_key", "termination: true", "reward_at_least"))


# ------------------------------------------------------------------------------------------------------------ imports


def test_imports_listed_in_the_task(tiny_module):
    module = tiny_module("tinytest/Listed-v0")
    task = {"name": "listed", "env_id": "tinytest/Listed-v0", "imports": [module]}
    assert module not in sys.modules
    assert import_task_modules(task) == [module]
    assert sys.modules[module].IMPORTED and "tinytest/Listed-v0" in gym.registry
    env = make_env(task)
    assert env.observation_space.shape == (2,)
    env.close()


def test_default_imports_register_our_envs():
    assert import_task_modules({"env_id": "diffpolicy/TwoPath-v0"}) == ["diffpolicy.envs"]
    assert "diffpolicy/TwoPath-v0" in gym.registry


def test_imports_the_module_of_a_module_colon_id(tiny_module):
    module = tiny_module("TinyColon-v0")
    task = {"name": "colon", "env_id": f"{module}:TinyColon-v0", "imports": ["diffpolicy.envs"]}
    assert import_task_modules(task) == ["diffpolicy.envs", module]
    assert module in sys.modules
    env = make_env(task, size=3)  # overrides reach the constructor
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,)
    env.close()


def test_env_kwargs_and_overrides(tiny_module):
    module = tiny_module("tinytest/Kwargs-v0")
    task = {"env_id": "tinytest/Kwargs-v0", "imports": [module], "env_kwargs": {"size": 4}}
    assert make_env(task).observation_space.shape == (4,)
    assert make_env(task, size=5).observation_space.shape == (5,)
    assert task["env_kwargs"] == {"size": 4}  # not modified
    # render_mode: from env_kwargs unless given explicitly
    task["env_kwargs"]["render_mode"] = "rgb_array"
    assert make_env(task).render_mode == "rgb_array"
    assert make_env(task, render_mode=None).render_mode == "rgb_array"


def test_failed_import_names_task_module_and_error(tiny_module):
    task = {"name": "broken", "env_id": "tinytest/Missing-v0", "imports": ["no_such_module_for_diffpolicy"]}
    with pytest.raises(ImportError, match="no_such_module_for_diffpolicy") as err:
        make_env(task)
    assert "task 'broken'" in str(err.value) and "No module named" in str(err.value)

    raising = tiny_module("tinytest/Raising-v0", "raise RuntimeError('boom at import')\n")
    task = {"name": "raising", "env_id": f"{raising}:Raising-v0"}
    with pytest.raises(ImportError) as err:
        import_task_modules(task)
    message = str(err.value)
    assert "task 'raising'" in message and repr(raising) in message and "RuntimeError: boom at import" in message


def test_unknown_env_id_names_id_task_and_close_matches():
    with pytest.raises(TaskError) as err:
        make_env({"name": "typo", "env_id": "MountainCarContinous-v0"})
    message = str(err.value)
    assert "'MountainCarContinous-v0'" in message and "task 'typo'" in message
    assert "close matches" in message and "'MountainCarContinuous-v0'" in message
    with pytest.raises(TaskError, match="diffpolicy/TwoPath-v0"):
        make_env({"name": "ours", "env_id": "diffpolicy/TwoPth-v0"})


# ----------------------------------------------------------------------------------------------------------- wrappers


def test_add_render_observation_gives_a_dict_observation():
    pytest.importorskip("pygame", reason="classic-control rendering needs pygame (the dev extra installs it)")
    task = {"name": "car_pixels", "env_id": "MountainCarContinuous-v0",
            "wrappers": [{"wrapper": "gymnasium.wrappers:AddRenderObservation", "kwargs": {"render_only": False}}]}
    env = make_env(task, render_mode="rgb_array")
    assert isinstance(env.observation_space, spaces.Dict)
    shapes = flat_obs_shapes(env.observation_space)
    assert shapes["state"] == ((2,), np.dtype(np.float32))
    assert shapes["pixels"][0][2] == 3 and shapes["pixels"][1] == np.uint8
    obs, _ = env.reset(seed=0)
    flat = flatten_obs(obs)
    assert set(flat) == {"state", "pixels"} and flat["pixels"].shape == shapes["pixels"][0]
    obs, *_ = env.step(np.zeros(1, np.float32))
    assert env.observation_space.contains(obs)
    env.close()


def test_wrappers_apply_in_order_with_kwargs(tiny_module):
    module = tiny_module("tinytest/Wrapped-v0")
    task = {"name": "wrapped", "env_id": "tinytest/Wrapped-v0", "imports": [module],
            "env_kwargs": {"render_mode": "rgb_array"},
            "wrappers": [{"wrapper": "gymnasium.wrappers:TimeLimit", "kwargs": {"max_episode_steps": 3}},
                         {"wrapper": "gymnasium.wrappers:AddRenderObservation",
                          "kwargs": {"render_only": False, "obs_key": "joints"}},
                         "gymnasium.wrappers:RecordEpisodeStatistics"]}
    env = make_env(task)
    assert isinstance(env, gym.wrappers.RecordEpisodeStatistics)
    assert isinstance(env.env, gym.wrappers.AddRenderObservation)
    assert isinstance(env.env.env, gym.wrappers.TimeLimit)
    assert set(flat_obs_shapes(env.observation_space)) == {"joints", "pixels"}
    env.reset(seed=0)
    ends = [env.step(np.array([0.1], np.float32))[3] for _ in range(3)]
    assert ends == [False, False, True]  # our TimeLimit(3), not the registered 10


@pytest.mark.parametrize("wrappers, problem", [
    ({"wrapper": "gymnasium.wrappers:TimeLimit"}, "must be a list"),
    ([{"kwargs": {}}], r"wrappers\[0\]: expected"),
    ([{"wrapper": "gymnasium.wrappers:TimeLimit", "kwarg": {}}], r"wrappers\[0\]: expected"),
    ([{"wrapper": "gymnasium.wrappers.TimeLimit"}], "must read 'package.module:Class'"),
    ([{"wrapper": "gymnasium.wrappers:TimeLimit", "kwargs": [1]}], "kwargs must be a mapping"),
])
def test_malformed_wrappers_are_clear_errors(wrappers, problem):
    with pytest.raises(TaskError, match=problem):
        wrapper_specs({"name": "w", "wrappers": wrappers})


def test_unknown_wrapper_is_an_import_error():
    with pytest.raises(ImportError, match=r"task 'w': wrappers\[1\]: cannot load wrapper 'gymnasium.wrappers:Nope'"):
        wrapper_specs({"name": "w", "wrappers": [{"wrapper": "gymnasium.wrappers:TimeLimit"},
                                                 {"wrapper": "gymnasium.wrappers:Nope"}]})


# ------------------------------------------------------------------------------------------------------- observations


def test_flatten_box_and_nested_dict():
    box = np.arange(3, dtype=np.float32)
    assert list(flatten_obs(box)) == ["state"] and flatten_obs(box)["state"] is not None
    np.testing.assert_array_equal(flatten_obs(box, box_key="obs")["obs"], box)
    obs = {"robot": {"qpos": np.zeros(2), "hand": {"grip": 1.0}}, "image": np.zeros((4, 4, 3), np.uint8)}
    flat = flatten_obs(obs)
    assert list(flat) == ["robot/qpos", "robot/hand/grip", "image"]
    assert flat["robot/hand/grip"].shape == () and flat["image"].dtype == np.uint8
    with pytest.raises(ValueError, match="'a/b' occurs twice"):
        flatten_obs({"a/b": 1.0, "a": {"b": 2.0}})


def test_flat_obs_shapes_of_spaces():
    box = spaces.Box(-1, 1, (3,), np.float64)
    assert flat_obs_shapes(box) == {"state": ((3,), np.dtype(np.float64))}
    assert flat_obs_shapes(box, box_key="x") == {"x": ((3,), np.dtype(np.float64))}
    nested = spaces.Dict({"robot": spaces.Dict({"qpos": spaces.Box(-1, 1, (7,), np.float32)}),
                          "pixels": spaces.Box(0, 255, (8, 8, 3), np.uint8)})
    shapes = flat_obs_shapes(nested)
    assert shapes == {"robot/qpos": ((7,), np.dtype(np.float32)), "pixels": ((8, 8, 3), np.dtype(np.uint8))}
    sample = flatten_obs(nested.sample())  # same keys, shapes and dtypes as the observations
    assert {k: (v.shape, v.dtype) for k, v in sample.items()} == shapes


@pytest.mark.parametrize("space, where", [
    (spaces.Discrete(3), "the observation space is Discrete"),
    (spaces.Tuple((spaces.Box(-1, 1, (2,)),)), "the observation space is Tuple"),
    (spaces.Dict({"a": spaces.Dict({"b": spaces.MultiBinary(4)})}), "observation 'a/b' is MultiBinary"),
])
def test_flat_obs_shapes_rejects_other_spaces(space, where):
    with pytest.raises(TypeError, match=where):
        flat_obs_shapes(space)


# ---------------------------------------------------------------------------------------- example tasks (examples/)

EXAMPLE_TASKS = Path(__file__).resolve().parents[1] / "examples" / "tasks"


@pytest.mark.parametrize("name", ["reacher", "mountain_car"])
def test_example_task_builds_and_its_expert_succeeds(name, monkeypatch):
    if name == "mountain_car":
        pytest.importorskip("pygame", reason="classic-control rendering needs pygame (the dev extra installs it)")
    monkeypatch.syspath_prepend(str(EXAMPLE_TASKS))
    task = yaml.safe_load((EXAMPLE_TASKS / f"{name}.yaml").read_text())
    env = make_env(task)
    signal = SuccessSignal.from_task(task)
    module, _, attr = task["expert"].partition(":")
    make_expert = getattr(importlib.import_module(module), attr)
    shapes = flat_obs_shapes(env.observation_space)
    from diffpolicy.data.obs import ObsSpec

    spec = ObsSpec.from_task(task)  # the policy's keys are made from the env's raw keys
    assert set(spec.shapes({k: shape for k, (shape, _) in shapes.items()}, task["env_id"])) == set(task["obs_keys"])
    obs, _ = env.reset(seed=0)
    expert = make_expert(task["env_id"], env, 0)
    expert.reset()
    success = False
    while True:
        flat = flatten_obs(obs)
        assert {k: (v.shape, v.dtype) for k, v in flat.items()} == shapes
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        success |= signal.step(reward, terminated, truncated, info)
        if terminated or truncated:
            break
    env.close()
    assert success
