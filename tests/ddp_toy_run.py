"""Worker for test_training_ddp: trains a toy regression with the shared loop, under torchrun or alone.

Usage: ``python ddp_toy_run.py OUT_DIR SIM_WORLD``. Under torchrun each rank draws its batch from its own step
generator; alone, it concatenates the batches of ``SIM_WORLD`` simulated ranks, which is what DDP's averaged
gradient of equal-sized per-rank batches amounts to.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

from diffpolicy.training.loop import TrainConfig, pick_device, step_generator, train


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, batch, generator):
        x, y = batch
        return (self.net(x) - y).pow(2).mean()


def draw(g):
    x = torch.randn(8, 3, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def main(out: str, sim_world: int) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup_steps=1, checkpoint_every=20, log_every=5)
    distributed = dist.is_available() and "WORLD_SIZE" in __import__("os").environ

    def batch_fn(step, g):
        if distributed:
            return draw(g)
        parts = [draw(step_generator(cfg.seed, step, torch.device("cpu"), r)) for r in range(sim_world)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    model = Regression()
    train(model, batch_fn, cfg, out, {"world": sim_world})
    if not distributed or dist.get_rank() == 0:
        torch.save(model.state_dict(), f"{out}/final.pt")
    if distributed:  # the GPU this rank would take on a CUDA machine (a device object needs no GPU to exist)
        with open(f"{out}/device_rank{dist.get_rank()}.txt", "w") as f:
            f.write(str(pick_device("cuda")))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
