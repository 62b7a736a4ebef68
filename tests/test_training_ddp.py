"""The shared loop under torchrun (2 CPU processes, gloo) matches a single process on the union of the batches."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_toy_run.py")


def test_two_process_ddp_equals_single_process_on_the_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", "29561", str(WORKER), str(tmp_path / "ddp"), "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "single"), "2"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    a = torch.load(tmp_path / "ddp/final.pt", weights_only=True)
    b = torch.load(tmp_path / "single/final.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # Each rank binds its own LOCAL_RANK device; only rank 0 wrote checkpoints and logs.
    assert [(tmp_path / f"ddp/device_rank{r}.txt").read_text() for r in (0, 1)] == ["cuda:0", "cuda:1"]
    assert (tmp_path / "ddp/checkpoints/latest").is_file()
    assert len(list((tmp_path / "ddp/tb").iterdir())) == 1


def test_device_choice_follows_local_rank(monkeypatch):
    from diffpolicy.training.loop import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("auto") == torch.device("cuda", 3) and pick_device("cuda") == torch.device("cuda", 3)
    assert pick_device("cuda:1") == torch.device("cuda", 1) and pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda", local_rank=0) == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
