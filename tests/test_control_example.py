"""examples/robot_loop.py runs against the simulated task and reports its latency statistics."""

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robot_loop.py"


def test_robot_loop_example(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = subprocess.run([sys.executable, str(EXAMPLE), "--checkpoint", str(ckpt), "--hz", "20", "--n-steps", "30",
                          "--sampler", "ddim", "--steps", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "async mode, smoothing rtc, ddim x 2 steps, 20 Hz" in out.stdout
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["steps"] == 30 and report["act_ms"]["n"] == report["steps"]
    assert sum(report["inference_delay_steps"].values()) == report["inference_ms"]["n"] >= report["steps"] // 8
    assert {"p50", "p99"} <= report["loop_ms"].keys()  # reported, not judged: timing is for benchmarks/
