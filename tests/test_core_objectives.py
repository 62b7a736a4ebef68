"""Training losses: targets, weights, time sampling, and errors."""

import pytest
import torch

from diffpolicy.core.objectives import DDPM, FlowMatching, split_prediction


def oracle(objective, x0, noise_holder):
    """A 'network' that returns the exact target, recovering the noise from x_t and x0."""

    def net(x, t, cond):
        alpha, sigma = recover(objective, t, x)
        noise = (x - alpha * x0) / sigma
        noise_holder.append(noise)
        return objective.target(x0, noise, alpha, sigma)

    return net


def recover(objective, t, x):
    shape = (-1,) + (1,) * (x.ndim - 1)
    if isinstance(objective, DDPM):
        acp = objective.alphas_cumprod.to(x.dtype)[t.long()]
        return acp.sqrt().reshape(shape), (1 - acp).sqrt().reshape(shape)
    s = (t / objective.time_scale).reshape(shape)
    return 1 - s, s


@pytest.mark.parametrize("objective", [DDPM(100, prediction=p) for p in ("epsilon", "sample", "v_prediction")]
                         + [FlowMatching(time_sampling=s) for s in ("uniform", "logit_normal", "beta")])
def test_loss_is_zero_for_the_exact_target_and_positive_otherwise(objective):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 16, 2, dtype=torch.float64, generator=g)
    held = []
    assert objective.loss(oracle(objective, x0, held), x0, generator=g) < 1e-10
    assert objective.loss(lambda x, t, c: torch.zeros_like(x), x0, generator=g) > 0.1


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_split_prediction_inverts_the_target(prediction):
    obj = DDPM(100, prediction=prediction)
    x0, noise = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    alpha = torch.tensor(0.8, dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    x = alpha * x0 + sigma * noise
    got_x0, got_noise = split_prediction(obj.target(x0, noise, alpha, sigma), x, alpha, sigma, prediction)
    torch.testing.assert_close((got_x0, got_noise), (x0, noise))


def test_min_snr_weights_cap_low_noise_steps():
    plain, capped = DDPM(1000, loss_weighting=None), DDPM(1000, loss_weighting="min_snr", snr_gamma=5.0)
    w = capped._train_tables[2]
    assert torch.all(plain._train_tables[2] == 1)
    assert w[0] < 0.01 and torch.allclose(w[-100:], torch.ones(100))  # SNR < 5 at high noise: weight 1


def test_flow_time_distributions():
    g = torch.Generator().manual_seed(0)
    for kind, mean_range in (("uniform", (0.48, 0.52)), ("logit_normal", (0.48, 0.52)), ("beta", (0.58, 0.62))):
        alpha, sigma, model_time, w = FlowMatching(time_sampling=kind).sample_training_times(20000, "cpu", g)
        assert torch.allclose(alpha + sigma, torch.ones(20000)) and torch.all((sigma >= 0) & (sigma <= 1))
        assert mean_range[0] < sigma.mean() < mean_range[1], (kind, sigma.mean())
        assert torch.allclose(model_time, sigma * 1000)


def test_flow_time_shift_moves_training_times_toward_the_data():
    # t = s u / (1 + (s - 1) u) for uniform u: P(t <= x) = x / (s + (1 - s) x); with s = 1/3 the median is 0.25
    g = torch.Generator().manual_seed(0)
    alpha, sigma, model_time, _ = FlowMatching(time_shift=1 / 3).sample_training_times(20000, "cpu", g)
    assert 0.24 < sigma.median() < 0.26, sigma.median()
    for x in (0.1, 0.5, 0.9):
        assert abs((sigma <= x).float().mean() - x / (1 / 3 + 2 / 3 * x)) < 0.01
    assert torch.allclose(alpha + sigma, torch.ones(20000)) and torch.allclose(model_time, sigma * 1000)


def test_bad_objective_arguments():
    with pytest.raises(ValueError, match="unknown beta schedule 'cosine'"):
        DDPM(beta_schedule="cosine")
    with pytest.raises(ValueError, match="DDPM prediction must be"):
        DDPM(prediction="velocity")
    with pytest.raises(ValueError, match="unknown flow time sampling 'normal'"):
        FlowMatching(time_sampling="normal")
    with pytest.raises(ValueError, match="flow sampling_shift must be > 0, got 0"):
        FlowMatching(sampling_shift=0)
    with pytest.raises(ValueError, match="flow time_shift must be > 0, got -1"):
        FlowMatching(time_shift=-1)
    with pytest.raises(ValueError, match="unknown timestep spacing 'even'"):
        DDPM(spacing="even")


def test_ddpm_spacing_is_the_default_of_its_sampling_schedule():
    obj = DDPM(100, spacing="leading")
    assert obj.sampling_schedule(4).model_time.tolist() == [75, 50, 25, 0, 0]  # ends at timestep 0, then clean
    assert obj.sampling_schedule(4, "trailing").model_time.tolist() == [99, 74, 49, 24, 0]
    with pytest.raises(ValueError, match="unknown loss weighting"):
        DDPM(loss_weighting="snr")
