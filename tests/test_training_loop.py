"""The shared training loop: exact resume, atomic checkpoints, NaN stop."""

from pathlib import Path

import pytest
import torch
from torch import nn

from diffpolicy.core.objectives import FlowMatching
from diffpolicy.policy.checkpoint import load_tensors, load_train_state, resolve_checkpoint, save_checkpoint
from diffpolicy.training.loop import TrainConfig, train


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Mish(), nn.Linear(32, 2))
        self.objective = FlowMatching()

    def forward(self, batch, generator):
        net = lambda x, t, c: self.net(torch.cat([x, t[:, None] / 1000], -1))  # noqa: E731
        return self.objective.loss(net, batch, generator=generator)


def batches(step, g):
    return torch.randn(16, 2, generator=g) * 0.1 + torch.tensor([1.0, -1.0])


def run(tmp, resume=False, interrupt_at=None):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=4, log_every=2)
    model = Toy()

    def batch_fn(step, g):
        if step == interrupt_at:
            raise KeyboardInterrupt
        return batches(step, g)

    train(model, batch_fn, cfg, tmp, {"steps": 12}, resume=resume)
    return model


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", interrupt_at=10)  # killed after the step-8 checkpoint
    resumed = run(tmp_path / "split", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    ema_full = load_tensors(resolve_checkpoint(tmp_path / "full"), "ema")
    ema_resumed = load_tensors(resolve_checkpoint(tmp_path / "split"), "ema")
    assert all(torch.equal(ema_full[k], ema_resumed[k]) for k in ema_full)
    assert load_train_state(resolve_checkpoint(tmp_path / "split"))["step"] == 12
    kept = sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000008", "step_00000012"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    class Exploding(Toy):
        def forward(self, batch, generator):
            loss = super().forward(batch, generator)
            return loss * float("nan") if self.calls_left() else loss

        count = 0

        def calls_left(self):
            self.count += 1
            return self.count > 5

    cfg = TrainConfig(steps=10, batch_size=16, warmup_steps=1, checkpoint_every=4, log_every=1)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 5.*step_00000004"):
        train(Exploding(), batches, cfg, tmp_path, {})
    assert resolve_checkpoint(tmp_path).name == "step_00000004"


def test_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path)
    ckpt = save_checkpoint(tmp_path / "c", 1, {"model": {"w": torch.ones(2)}}, {"a": 1})
    with pytest.raises(FileNotFoundError, match="has no ema.safetensors"):
        load_tensors(ckpt, "ema")
    assert not list(Path(tmp_path / "c").glob(".tmp*"))


def test_bf16_cpu_autocasts_the_forward_pass_or_refuses_without_native_bf16(tmp_path, monkeypatch):
    from diffpolicy.training import loop

    seen = []

    class Probe(Toy):
        def forward(self, batch, generator):
            seen.append(self.net(torch.zeros(1, 3)).dtype)
            return super().forward(batch, generator)

    cfg = TrainConfig(steps=2, batch_size=16, warmup_steps=1, checkpoint_every=2, bf16_cpu=True)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        train(Probe(), batches, cfg, tmp_path / "bf16", {}, device=torch.device("cpu"))
        assert seen and set(seen) == {torch.bfloat16}
        weights = load_tensors(resolve_checkpoint(tmp_path / "bf16"), "model")
        assert all(w.dtype == torch.float32 for w in weights.values())  # master weights stay float32
    seen.clear()
    train(Probe(), batches, TrainConfig(steps=2, batch_size=16, warmup_steps=1), tmp_path / "fp32", {},
          device=torch.device("cpu"))
    assert set(seen) == {torch.float32}
    monkeypatch.setattr(loop.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="this CPU has no native bf16"):
        train(Probe(), batches, cfg, tmp_path / "refused", {}, device=torch.device("cpu"))
    seen.clear()
    cfg.bf16_cpu = "auto"  # falls back to float32 where bf16 would be emulated
    train(Probe(), batches, cfg, tmp_path / "auto", {}, device=torch.device("cpu"))
    assert set(seen) == {torch.float32}


def test_keep_checkpoints_zero_keeps_every_budget_with_its_training_seconds(tmp_path, fake_clock):
    """``keep_checkpoints=0`` leaves every checkpoint (to evaluate a run at several budgets); each records the
    training seconds spent so far (callbacks excluded), carried across a resume."""
    from diffpolicy.training import loop

    clock = fake_clock(loop, per_read=1.0)  # every clock read: 1 virtual second
    cfg = TrainConfig(steps=8, batch_size=16, warmup_steps=1, checkpoint_every=2, keep_checkpoints=0, eval_every=4)
    told = []  # the training seconds the loop hands to each evaluation

    def slow_eval(model, step, train_seconds):
        told.append(train_seconds)
        clock.advance(1000.0)
        return {}

    train(Toy(), batches, cfg, tmp_path, {}, evaluate=slow_eval)
    steps = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert [p.name for p in steps] == [f"step_{s:08d}" for s in (2, 4, 6, 8)]
    seconds = [load_train_state(p)["train_seconds"] for p in steps]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))
    assert seconds[-1] < 1000  # the evaluations' 2 x 1000 s are not training time
    assert len(told) == 2 and told[1] < 1000  # evaluation sees the checkpoints' clock (its own time excluded)
    assert told[0] > seconds[1] and told[1] > seconds[3]  # read just after the checkpoint of the same step
    cfg = TrainConfig(steps=10, batch_size=16, warmup_steps=1, checkpoint_every=2, keep_checkpoints=0)
    train(Toy(), batches, cfg, tmp_path, {}, resume=True)
    assert load_train_state(resolve_checkpoint(tmp_path))["train_seconds"] > seconds[-1]


class ToyWithEncoder(Toy):
    """``encoder.`` parameters, as a policy's observation encoder has, beside the denoiser's."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2)

    def forward(self, batch, generator):
        return super().forward(self.encoder(batch), generator)


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_encoder_lr_scale_multiplies_only_the_encoders_updates(tmp_path, scale):
    """AdamW's update is proportional to the lr: after one step the encoder has moved ``scale`` times as far as at
    scale 1 (0: not at all), the rest of the model exactly as far."""
    moved = {}
    for s in (1.0, scale):
        torch.manual_seed(0)
        model = ToyWithEncoder()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(steps=1, batch_size=16, lr=1e-2, warmup_steps=1, checkpoint_every=1, encoder_lr_scale=s)
        train(model, batches, cfg, tmp_path / str(s), {})
        moved[s] = {k: v - before[k] for k, v in model.state_dict().items()}
    for k in moved[1.0]:
        expected = moved[1.0][k] * (scale if k.startswith("encoder.") else 1.0)
        assert moved[1.0][k].abs().max() > 0, k
        torch.testing.assert_close(moved[scale][k], expected, rtol=1e-4, atol=1e-8)
