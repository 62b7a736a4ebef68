"""Worker for test_training_faults: a toy regression trained by the shared loop, resuming from its last checkpoint.

Usage: ``python fault_toy_run.py OUT_DIR``. It checkpoints at every step (so a kill often lands mid-save) and writes
``OUT_DIR/final.pt`` when it completes; run it again after a kill and it continues where the checkpoints say.
"""

import sys
import time

import torch
from torch import nn

from diffpolicy.training.loop import TrainConfig, train


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, batch, generator):
        x, y = batch
        return (self.net(x) - y).pow(2).mean()


def batch_fn(step, g):
    time.sleep(0.02)  # a step of real work: the kills spread over the training loop
    x = torch.randn(16, 3, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def main(out: str) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(steps=100, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=1, log_every=1)
    model = Regression()
    train(model, batch_fn, cfg, out, {"toy": True}, resume=True, device=torch.device("cpu"))
    torch.save(model.state_dict(), f"{out}/final.pt")


if __name__ == "__main__":
    main(sys.argv[1])
