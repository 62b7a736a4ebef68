"""ArmPick env and expert: gymnasium compliance, determinism, control semantics, cameras, grasping."""

import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

import diffpolicy.envs  # noqa: E402,F401
from diffpolicy.envs.arm_pick import ArmPickEnv  # noqa: E402
from diffpolicy.envs.experts import make_expert  # noqa: E402

ENV_ID = "diffpolicy/ArmPick-v0"
STATE_KEYS = {"state", "eef_pos", "gripper", "cube_pos", "cube_quat"}


@pytest.mark.parametrize("obs_type", ["state", "dict", "pixels"])
def test_check_env_passes_without_warnings(obs_type):
    env = gym.make(ENV_ID, obs_type=obs_type, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


def test_spaces_exact_and_state_layout():
    env = ArmPickEnv(obs_type="pixels")
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
    space = env.observation_space
    assert set(space.spaces) == STATE_KEYS | {"img_scene", "img_wrist"}
    assert space["state"].shape == (11,) and space["state"].dtype == np.float32
    assert np.all(np.isfinite(space["state"].low)) and np.all(np.isfinite(space["state"].high))
    for cam in ("img_scene", "img_wrist"):
        assert space[cam] == gym.spaces.Box(0, 255, shape=(96, 96, 3), dtype=np.uint8)
    assert ArmPickEnv().observation_space == space["state"]
    assert env.control_hz == 10 and env.metadata["render_fps"] == 10
    obs, _ = env.reset(seed=4)
    parts = np.concatenate([obs["eef_pos"], obs["gripper"], obs["cube_pos"], obs["cube_quat"]])
    np.testing.assert_array_equal(obs["state"], parts)
    np.testing.assert_allclose(obs["cube_pos"], env.cube_pos, atol=1e-6)
    assert obs["gripper"][0] == pytest.approx(0.1, abs=1e-6)  # starts fully open
    assert obs["cube_quat"][0] >= 0 and np.linalg.norm(obs["cube_quat"]) == pytest.approx(1.0, abs=1e-5)
    env.close()


def test_unknown_obs_type_and_bad_action_are_clear_errors():
    with pytest.raises(ValueError, match="unknown obs_type 'rgbd'.*pixels"):
        ArmPickEnv(obs_type="rgbd")
    env = ArmPickEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0.0, np.inf, 0.0, 0.0]))


def test_same_seed_and_actions_give_bit_identical_trajectories():
    actions = np.random.default_rng(0).uniform(-1, 1, size=(25, 4)).astype(np.float32)
    runs = []
    for _ in range(2):
        env = ArmPickEnv(obs_type="pixels")
        frames = [env.reset(seed=21)[0]]
        frames += [env.step(a)[0] for a in actions]
        runs.append(frames)
        env.close()
    for a, b in zip(*runs):
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), key
    starts = {ArmPickEnv().reset(seed=s)[0].tobytes() for s in range(5)}
    assert len(starts) == 5  # the seed varies the cube and arm start


def test_actions_move_the_end_effector_by_the_scaled_delta():
    env = ArmPickEnv()
    env.reset(seed=1)
    start = env.eef_pos
    for _ in range(3):
        env.step(np.array([1.0, 0.0, -0.5, -1.0], dtype=np.float32))
    moved = env.eef_pos - start
    # 3 steps of (+2 cm, 0, -1 cm); the servo lags a little behind each target
    np.testing.assert_allclose(moved, [0.06, 0.0, -0.03], atol=0.006)
    for _ in range(5):
        env.step(np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32))
    assert env.gripper_opening < 0.01  # closes fully on nothing


def test_scripted_grasp_lifts_the_cube():
    env = ArmPickEnv()
    env.reset(seed=6)
    cube = env.cube_pos

    def move_to(target, grip, steps=30):
        for _ in range(steps):
            delta = np.clip((np.asarray(target) - env.eef_pos) / 0.02, -1, 1)
            out = env.step(np.r_[delta, grip].astype(np.float32))
        return out

    move_to([cube[0], cube[1], 0.1], -1.0)
    move_to([cube[0], cube[1], 0.022], -1.0)
    move_to(env.eef_pos, 1.0, steps=5)
    assert 0.035 < env.gripper_opening < 0.06  # pads stopped on the cube (rotated up to 30 deg)
    obs, reward, terminated, _, info = move_to([cube[0], cube[1], 0.2], 1.0)
    assert terminated and info["is_success"] and reward == 1.0
    assert info["cube_lift"] >= 0.08 and obs[6] >= 0.1  # state[6] is the cube height


def red_visible(frame):
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return ((r - g > 80) & (r - b > 80)).any()


def test_cameras_render_distinct_nonblank_views():
    env = ArmPickEnv(obs_type="pixels", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    scene, wrist = obs["img_scene"], obs["img_wrist"]
    assert env.render().shape == (256, 256, 3)
    for frame in (scene, wrist, env.render()):
        assert frame.std() > 10  # not blank
    assert red_visible(scene) and red_visible(env.render()), "cube not visible from the scene camera"
    assert np.abs(scene.astype(int) - wrist.astype(int)).mean() > 10  # two different viewpoints
    # the wrist camera rides on the hand: once above the cube, it sees it
    for _ in range(15):
        delta = np.clip((env.cube_pos[:2] - env.eef_pos[:2]) / 0.02, -1, 1)
        obs = env.step(np.array([*delta, -0.5, -1.0], dtype=np.float32))[0]
    assert red_visible(obs["img_wrist"]), "cube not visible from the wrist camera above it"
    assert np.abs(obs["img_wrist"].astype(int) - wrist.astype(int)).mean() > 3
    env.close()


def test_expert_succeeds_with_varied_demos():
    env = gym.make(ENV_ID)
    first_actions = []
    for seed in range(8):
        expert = make_expert(ENV_ID, env, seed=100 + seed)
        obs, info = env.reset(seed=seed)
        expert.reset()
        actions = []
        for _ in range(200):
            actions.append(expert.act(obs))
            obs, _, terminated, truncated, info = env.step(actions[-1])
            if terminated or truncated:
                break
        assert info["is_success"], f"expert failed on seed {seed}"
        first_actions.append(np.stack(actions[:5]))
    # the same env seed with another expert seed gives another demo
    expert = make_expert(ENV_ID, env, seed=999)
    obs, _ = env.reset(seed=0)
    expert.reset()
    other = np.stack([expert.act(env.step(np.zeros(4, np.float32))[0]) for _ in range(5)])
    assert not np.allclose(other, first_actions[0], atol=1e-3)


def test_reset_to_state_reproduces_a_recorded_state():
    env = ArmPickEnv()
    env.reset(seed=3)
    for _ in range(4):
        recorded = env.step(np.array([0.3, -0.2, -0.6, 0.2], dtype=np.float32))[0]
    other = ArmPickEnv()
    obs, _ = other.reset(seed=99, options={"reset_to_state": recorded})
    np.testing.assert_allclose(obs, recorded, atol=1e-6)
    bad = recorded.copy()
    bad[7:11] = 0.0
    with pytest.raises(ValueError, match="unit cube_quat"):
        other.reset(options={"reset_to_state": bad})
    with pytest.raises(ValueError, match=r"\(11,\)"):
        other.reset(options={"reset_to_state": recorded[:10]})


def test_violent_actions_keep_the_cube_inside_the_observed_box():
    env = ArmPickEnv()
    low, high = env.observation_space.low[4:7], env.observation_space.high[4:7]
    rng = np.random.default_rng(0)
    for seed in range(12):
        env.reset(seed=seed)
        for _ in range(60):
            env.step(rng.choice([-1.0, 1.0], size=4).astype(np.float32))  # bang-bang: shoves and flings the cube
            cube = env.cube_pos  # raw simulator state, before the observation clip
            assert np.all(cube >= low - 1e-3) and np.all(cube <= high + 1e-3), cube
            assert np.all(np.isfinite(env.data.qpos))


def test_expert_recovers_when_the_cube_is_lost_during_the_lift():
    env = ArmPickEnv()
    expert = make_expert(ENV_ID, env, seed=4)
    obs, _ = env.reset(seed=4)
    expert.reset()
    while expert.phase != "lift":
        obs = env.step(expert.act(obs))[0]
    # knock the cube out of the hand: put it back on the table elsewhere
    cube_q = env.model.joint("cube").qposadr[0]
    env.data.qpos[cube_q:cube_q + 7] = [-0.06, 0.07, 0.02, 1.0, 0.0, 0.0, 0.0]
    env.data.qvel[:] = 0.0
    phases = []
    for _ in range(150):
        obs, _, terminated, _, info = env.step(expert.act(obs))
        phases.append(expert.phase)
        if terminated:
            break
    assert "approach" in phases and info["is_success"]
