"""Tests of the MuJoCo Push-T task (diffpolicy/PushT-v0) and its scripted expert."""

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import diffpolicy.envs  # noqa: F401  (registers the ids)
from diffpolicy.envs import pusht_geometry as geom
from diffpolicy.envs.pusht import OBS_TYPES, PushTEnv

ENV_ID = "diffpolicy/PushT-v0"


def _flat(obs):
    if isinstance(obs, dict):
        return np.concatenate([np.asarray(obs[k], dtype=np.float64).ravel() for k in sorted(obs)])
    return np.asarray(obs, dtype=np.float64).ravel()


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_check_env_and_spaces(obs_type):
    env = PushTEnv(obs_type=obs_type, render_mode="rgb_array")
    check_env(env, skip_render_check=False)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert set(info) >= {"coverage", "is_success"}
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(0, 512, size=2).astype(np.float32))
        assert env.observation_space.contains(obs)
        assert isinstance(info["is_success"], bool) and 0.0 <= info["coverage"] <= 1.0
        assert reward == info["coverage"]
    if obs_type == "pixels":
        assert set(obs) == {"state", "agent_pos", "keypoint", "img"} and obs["img"].shape == (96, 96, 3)
    env.close()


def test_registered_with_time_limit():
    env = gym.make(ENV_ID)
    assert env.spec.max_episode_steps == 300
    assert env.unwrapped.control_hz == 10 and env.metadata["render_fps"] == 10
    env.reset(seed=0)
    truncated = False
    for t in range(300):
        _, _, terminated, truncated, _ = env.step(np.array([20.0, 20.0], dtype=np.float32))
        assert not terminated
    assert truncated and t == 299


def test_obs_layouts_agree():
    env = PushTEnv(obs_type="dict")
    obs, _ = env.reset(seed=7)
    state = obs["state"]
    np.testing.assert_array_equal(obs["agent_pos"], state[:2])
    np.testing.assert_allclose(obs["keypoint"], geom.keypoints(*state[2:]), atol=1e-3)
    kp_env = PushTEnv(obs_type="keypoints")
    kp_obs, _ = kp_env.reset(seed=7)
    np.testing.assert_array_equal(kp_obs, np.concatenate([obs["keypoint"].ravel(), state[:2]]))
    # the 9th keypoint is the centre of mass, which MuJoCo's block body frame sits on
    np.testing.assert_allclose(obs["keypoint"][8], env.data.qpos[2:4], atol=1e-3)


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_determinism_bit_for_bit(obs_type):
    actions = np.random.default_rng(1).uniform(0, 512, size=(40, 2))
    runs = []
    for _ in range(2):
        env = PushTEnv(obs_type=obs_type)
        obs, _ = env.reset(seed=11)
        traj = [_flat(obs)]
        for a in actions:
            obs, r, *_ = env.step(a)
            traj.append(np.append(_flat(obs), r))
        runs.append(np.concatenate(traj))
        env.close()
    assert runs[0].tobytes() == runs[1].tobytes()
    other, _ = PushTEnv(obs_type="state").reset(seed=12)
    assert not np.array_equal(other, runs[0][:5])


def test_initial_states_follow_the_original_distribution():
    env = PushTEnv()
    states = np.array([env.reset(seed=s)[0] for s in range(200)])
    assert states[:, :2].min() >= 50 and states[:, :2].max() < 450
    assert states[:, 2:4].min() >= 100 and states[:, 2:4].max() < 400
    assert states[:, 4].std() > 1.0  # angles spread over the circle
    assert all(geom.coverage((s[2], s[3], s[4])) <= 0.5 for s in states)


def test_coverage_on_goal_and_shifted():
    env = PushTEnv()
    gx, gy, gt = geom.GOAL_POSE
    _, info = env.reset(options={"reset_to_state": [60.0, 60.0, gx, gy, gt]})
    assert info["coverage"] == pytest.approx(1.0, abs=1e-9) and info["is_success"]
    _, reward, terminated, _, info = env.step(np.array([60.0, 60.0]))
    assert info["coverage"] > 0.99 and info["is_success"] and terminated and reward == info["coverage"]
    # shifting the T along x by d loses the area swept by its vertical edges: 120 * d (exact)
    assert geom.coverage((gx + 5.0, gy, 0.0), (gx, gy, 0.0)) == pytest.approx(1 - 5 * 120 / 6300)
    assert geom.coverage((gx, gy, gt + math.pi)) < 0.5
    _, info = env.reset(options={"reset_to_state": [60.0, 60.0, 100.0, 400.0, 0.0]})
    assert info["coverage"] == 0.0 and not info["is_success"]


def test_pushing_moves_the_block():
    env = PushTEnv()
    # agent below the bar's middle, pushing along +y: the block translates without turning
    env.reset(options={"reset_to_state": [256.0, 150.0, 256.0, 200.0, 0.0]})
    for _ in range(15):
        obs, *_ = env.step(np.array([256.0, 260.0]))
    assert obs[3] > 240.0 and abs(obs[2] - 256.0) < 1.0
    assert min(obs[4], 2 * np.pi - obs[4]) < 0.02
    # once the agent has left, the block stays put (quasi-static, like the original): no coasting
    for _ in range(3):
        before, *_ = env.step(np.array([50.0, 50.0]))
    assert before[3] - obs[3] < 2.0
    for _ in range(5):
        obs, *_ = env.step(np.array([50.0, 50.0]))
    np.testing.assert_allclose(obs[2:], before[2:], atol=1e-4)


def test_render_not_blank():
    env = PushTEnv(obs_type="pixels", render_mode="rgb_array", render_size=128)
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    for img in (frame, obs["img"]):
        assert img.std() > 10  # not one flat colour
        colours = {tuple(c) for c in img.reshape(-1, 3)[:: 7]}
        assert len(colours) > 3
    # the goal T (light green) is visible in the observation image
    green = (obs["img"][..., 1] > 200) & (obs["img"][..., 0] < 180)
    assert green.sum() > 50
    env.close()


def test_observation_images_at_another_size_show_the_same_scene():
    big, small = PushTEnv(obs_type="pixels"), PushTEnv(obs_type="pixels", image_size=48)
    assert small.observation_space["img"].shape == (48, 48, 3)
    a, _ = big.reset(seed=3)
    b, _ = small.reset(seed=3)
    assert b["img"].shape == (48, 48, 3) and np.array_equal(a["state"], b["state"])
    green = lambda img: ((img[..., 1] > 200) & (img[..., 0] < 180)).mean()  # noqa: E731  (goal T's share)
    assert abs(green(a["img"]) - green(b["img"])) < 0.01
    with pytest.raises(ValueError, match="image_size must be in \\[16, 512\\], got 8"):
        PushTEnv(obs_type="pixels", image_size=8)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown obs_type 'rgb'"):
        PushTEnv(obs_type="rgb")
    with pytest.raises(ValueError, match="render_mode"):
        PushTEnv(render_mode="human")
    env = PushTEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be 2 finite"):
        env.step(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="action must be 2 finite"):
        env.step(np.array([np.nan, 2.0]))
    with pytest.raises(ValueError, match="state must be 5 finite"):
        env.reset(options={"reset_to_state": [1.0, 2.0]})


def _expert_episode(env_seed, expert_seed):
    from diffpolicy.envs.experts import make_expert

    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=env_seed)
    expert = make_expert(ENV_ID, env, seed=expert_seed)
    actions, info = [], {}
    for _ in range(300):
        actions.append(expert.act(obs))
        assert actions[-1].shape == (2,) and actions[-1].dtype == np.float32
        obs, _, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            break
    return np.array(actions), info


@pytest.mark.parametrize("seed", [0, 1])
def test_expert_succeeds_within_the_limit(seed):
    actions, info = _expert_episode(seed, seed)
    assert info["is_success"] and info["coverage"] >= 0.95
    assert len(actions) < 300


def test_expert_is_a_deterministic_function_of_the_state():
    a, _ = _expert_episode(2, 5)
    b, _ = _expert_episode(2, 6)  # the expert seed is unused: same initial state, same demonstration
    c, _ = _expert_episode(3, 5)
    np.testing.assert_array_equal(a, b)
    n = min(len(a), len(c))
    assert not np.allclose(a[:n], c[:n], atol=1.0)
    # smooth strokes: targets advance by at most the travel speed (30 units/step); a new stroke starts at the agent,
    # which trails the last target by a few units
    assert np.linalg.norm(np.diff(a, axis=0), axis=1).max() < 60.0


def test_expert_replans_when_disturbances_push_the_block_off_its_plan():
    from diffpolicy.envs.experts.pusht import PushTExpert

    env = gym.make(ENV_ID)
    plans = []
    for noise in (0.0, 5.0):
        obs, _ = env.reset(seed=4)
        expert, rng = PushTExpert(env.unwrapped), np.random.default_rng(0)
        for _ in range(300):
            obs, _, terminated, truncated, info = env.step(expert.act(obs) + rng.normal(0.0, noise, 2))
            if terminated or truncated:
                break
        assert info["is_success"]
        plans.append(len(expert.plan_log))
    assert plans[1] > plans[0]  # undisturbed strokes run to their end; disturbed ones are cut short and replanned


def test_physics_stays_stable_when_the_block_is_driven_into_walls():
    import mujoco

    env = PushTEnv()
    rng = np.random.default_rng(0)
    unstable = 0
    for episode in range(20):
        env.reset(seed=episode)
        for k in range(100):
            block = env.data.qpos[2:4]
            # fast jumps, then shoves of the block towards the nearest walls (wedging it against the agent)
            if k % 10 == 0:
                action = rng.uniform(0, 512, 2)
            else:
                action = np.clip(block + rng.normal(0, 80, 2) - 40 * np.sign(block - 256), 0, 512)
            obs, *_ = env.step(action)
            assert np.isfinite(obs).all()
        # MuJoCo resets the state on a diverging step and only counts a warning: check the counter
        unstable += env.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number
    assert unstable == 0
