import numpy as np
import torch

from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.training.batches import StepBatches


def test_step_batches_are_the_same_with_workers_and_after_a_jump(tmp_path):
    buf = ReplayBuffer.create(tmp_path / "d.zarr")
    rng = np.random.default_rng(0)
    for n in (30, 41, 25):
        buf.append_episode({"state": rng.normal(size=(n, 3)).astype(np.float32),
                            "action": rng.normal(size=(n, 2)).astype(np.float32)})
    ds = WindowDataset(tmp_path / "d.zarr", ["state"])
    plain = StepBatches(ds, 16, seed=3)
    workers = StepBatches(ds, 16, seed=3, num_workers=2)
    for step in (0, 1, 2, 7, 8):  # 7 after 2: a resume-style jump restarts the prefetch
        a, b = plain(step), workers(step)
        assert torch.equal(a["action"], b["action"]) and torch.equal(a["obs"]["state"], b["obs"]["state"])
    assert not torch.equal(plain(0)["action"], plain(1)["action"])
    assert not torch.equal(plain(0)["action"], StepBatches(ds, 16, seed=4)(0)["action"])
