"""Runs survive faults: SIGKILL at random moments (also mid-save) and a failing checkpoint write."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffpolicy.policy import checkpoint as ckpt_module
from diffpolicy.policy.checkpoint import load_tensors, resolve_checkpoint, save_checkpoint
from diffpolicy.training.loop import TrainConfig, train

WORKER = Path(__file__).with_name("fault_toy_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigkill_at_20_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    clean = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "clean")], env=ENV, capture_output=True,
                           text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr[-2000:]
    rng, kills, out, mid_save = random.Random(0), 0, tmp_path / "killed", 0
    while kills < 20:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(out)], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 3.0))  # imports take ~1-2 s, then a step (and its checkpoint) every ~30 ms
        if proc.poll() is not None:  # it finished before the kill
            assert proc.returncode == 0, proc.stderr.read()[-2000:]
            break
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate()
        mid_save += stdout.count("left by an interrupted checkpoint save")  # found by this run's start (earlier)
        kills += 1
    final = subprocess.run([sys.executable, str(WORKER), str(out)], env=ENV, capture_output=True, text=True,
                           timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills == 20
    print(f"{kills} kills; {mid_save + final.stdout.count('left by an interrupted')} left a half-written checkpoint")
    a = torch.load(tmp_path / "clean/final.pt", weights_only=True)
    b = torch.load(out / "final.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert not list((out / "checkpoints").glob(".tmp_step_*"))  # what killed saves left was cleared
    latest = (out / "checkpoints/latest").read_text().strip()
    assert (out / "checkpoints" / latest).is_dir()


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_stops_clearly(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 1)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = model

        def forward(self, batch, generator):
            return self.lin(batch).pow(2).mean()

    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=1, checkpoint_every=2, log_every=1)
    real_save, calls = ckpt_module.save_file, []

    def failing_save(tensors, path):
        calls.append(path)
        if len(calls) > 2:  # the second checkpoint (two files each) hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(ckpt_module, "save_file", failing_save)
    with pytest.raises(OSError, match=r"writing checkpoint .*step_00000004 failed \(No space left on device\); the "
                                      r"previous checkpoint step_00000002 is untouched"):
        train(Toy(), lambda step, g: torch.randn(4, 3, generator=g), cfg, tmp_path, {"toy": True},
              device=torch.device("cpu"))
    root = tmp_path / "checkpoints"
    assert resolve_checkpoint(root).name == "step_00000002" and not list(root.glob(".tmp_step_*"))
    assert set(load_tensors(resolve_checkpoint(root), "model")) == {"lin.weight", "lin.bias"}


def test_pruning_keeps_the_newest_and_the_latest(tmp_path):
    state = {"w": torch.zeros(1)}
    for step in (5000, 6000):  # an older run's checkpoints with larger step numbers sort after the new ones
        save_checkpoint(tmp_path, step, {"model": state}, {})
    save_checkpoint(tmp_path, 1000, {"model": state}, {}, keep=2)
    names = sorted(p.name for p in tmp_path.glob("step_*"))
    assert "step_00001000" in names and (tmp_path / "latest").read_text().strip() == "step_00001000"
