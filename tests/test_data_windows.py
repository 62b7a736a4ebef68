"""Window index math against a direct, per-window transcription of the Diffusion Policy padding convention."""

import numpy as np
import pytest

from diffpolicy.data.windows import WindowIndex, WindowSpec, split_episodes


@pytest.mark.parametrize("horizon,n_obs,n_act", [(16, 2, 8), (10, 1, 10), (4, 4, 1), (1, 1, 1), (8, 3, 5)])
def test_windows_match_reference(reference_windows, horizon, n_obs, n_act):
    rng = np.random.default_rng(horizon)
    lengths = [1, 2, 7, 15, 16, 17, 40]
    ends = np.cumsum(lengths)
    data = rng.normal(size=(ends[-1], 3))
    spec = WindowSpec(horizon, n_obs, n_act)
    idx = WindowIndex(ends, horizon, spec.pad_before, spec.pad_after)
    expected = reference_windows(data, ends, horizon, spec.pad_before, spec.pad_after)
    assert len(idx) == len(expected)
    got = data[idx.rows(np.arange(len(idx)))]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(idx.rows(np.arange(len(idx)), n_obs), idx.rows(np.arange(len(idx)))[:, :n_obs])


def test_every_step_is_a_current_observation_and_actions_stay_real():
    ends = np.cumsum([12, 30, 9])
    spec = WindowSpec(16, 2, 8)
    idx = WindowIndex(ends, 16, spec.pad_before, spec.pad_after)
    rows = idx.rows(np.arange(len(idx)))
    raw = idx.start[:, None] + np.arange(16)
    current = raw[:, spec.n_obs_steps - 1]
    # windows whose current step lies inside the episode cover each step once (up to L - n_action_steps)
    for e, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
        mine = current[idx.episode == e]
        np.testing.assert_array_equal(mine, np.arange(a, b - spec.n_action_steps + 1))
    executed = raw[:, spec.n_obs_steps - 1:spec.n_obs_steps - 1 + spec.n_action_steps]
    assert np.all((executed >= idx.first[:, None]) & (executed <= idx.last[:, None]))
    assert np.all((rows >= idx.first[:, None]) & (rows <= idx.last[:, None]))


def test_episode_mask_selects_episodes():
    ends = np.cumsum([20, 20, 20])
    idx = WindowIndex(ends, 4, 1, 1, episode_mask=np.array([True, False, True]))
    assert set(idx.episode.tolist()) == {0, 2}
    assert len(idx) == 2 * (20 - 4 + 3)


def test_split_is_seeded_disjoint_and_capped():
    train, val = split_episodes(50, 0.2, seed=3)
    assert val.sum() == 10 and train.sum() == 40 and not (train & val).any()
    t2, v2 = split_episodes(50, 0.2, seed=3)
    np.testing.assert_array_equal(v2, val)
    assert not np.array_equal(split_episodes(50, 0.2, seed=4)[1], val)
    capped, v3 = split_episodes(50, 0.2, seed=3, max_train_episodes=7)
    np.testing.assert_array_equal(v3, val)
    assert capped.sum() == 7 and not (capped & val).any()
    assert split_episodes(2, 0.9, 0)[0].sum() == 1  # always leaves a training episode
    assert split_episodes(5, 0.0, 0)[1].sum() == 0
    with pytest.raises(ValueError):
        split_episodes(5, 1.0, 0)


def test_spec_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="exceeds horizon"):
        WindowSpec(8, 2, 8)
    with pytest.raises(ValueError):
        WindowSpec(4, 5, 1)
