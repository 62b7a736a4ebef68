"""End to end on a tiny TwoPath dataset: train (smoke budget), evaluate, reload, and fail on bad checkpoints."""

import json
import subprocess
from importlib import resources

import numpy as np
import pytest
import torch
import yaml

import diffpolicy.envs  # noqa: F401
from diffpolicy.cli import eval as eval_cli
from diffpolicy.training import run as train_run
from diffpolicy.policy.factory import load_policy

@pytest.mark.parametrize("policy", ["unet_ddpm", "unet_flow", "transformer_flow", "mlp_bc"])
def test_train_evaluate_reload(train_config, fake_clock, tmp_path, policy):
    from diffpolicy.training import loop

    fake_clock(loop, per_read=1.0)  # the loop's training clock (eval_history's train_seconds): 1 s per read
    summary = train_run.run(train_config(tmp_path / "run", policy))
    assert summary["n_episodes"] == 2 and 0 <= summary["success_rate"] <= 1
    assert (tmp_path / "run/eval/summary.png").is_file()
    assert policy != "unet_ddpm" or list((tmp_path / "run/eval/videos").glob("*.mp4"))
    assert (tmp_path / "run/checkpoints/latest").is_file()
    if policy == "mlp_bc":
        history = [json.loads(line) for line in (tmp_path / "run/eval_history.jsonl").read_text().splitlines()]
        assert [h["step"] for h in history] == [15, 30] and history[1]["train_seconds"] > history[0]["train_seconds"]
    policy_obj, cfg = load_policy(tmp_path / "run")
    obs = {"state": torch.zeros(3, 2, 4)}
    out = policy_obj.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (3, 8, 2) and out["action_pred"].shape == (3, 16, 2)
    if policy != "mlp_bc":
        fast = policy_obj.predict_action(obs, sampler="ddim", steps=2)["action"]
        assert fast.shape == (3, 8, 2) and torch.isfinite(fast).all()
    res = eval_cli.run({"checkpoint": str(tmp_path / "run"), "n_episodes": 2, "n_envs": 2, "seed": 5,
                        "sampler": None, "steps": None, "video_episodes": 0, "out": str(tmp_path / "ev")})
    again = json.loads((tmp_path / "ev/summary.json").read_text())
    assert again["episodes"] == res["episodes"] and again["n_action_steps"] == 8
    replan = eval_cli.run({"checkpoint": str(tmp_path / "run"), "n_episodes": 2, "n_envs": 2, "seed": 5,
                           "n_action_steps": 2, "video_episodes": 0, "out": str(tmp_path / "ev2")})
    assert replan["n_action_steps"] == 2
    for short, full in zip(replan["episodes"], res["episodes"]):  # executing 2 of 8: a chunk every 2 steps
        assert short["chunks"] == -(-short["length"] // 2) and full["chunks"] == -(-full["length"] // 8)
    shifted = {"checkpoint": str(tmp_path / "run"), "n_episodes": 2, "n_envs": 2, "seed": 5, "shift": 0.5,
               "video_episodes": 0, "out": str(tmp_path / "ev3")}
    if policy in ("unet_flow", "transformer_flow"):
        assert eval_cli.run(shifted)["shift"] == 0.5 and res["shift"] == policy_obj.objective.sampling_shift
        assert (tmp_path / "ev3/summary.json").is_file()
        a = policy_obj.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
        policy_obj.objective.sampling_shift = 0.5  # a denser time grid near the data changes the 4-step samples
        b = policy_obj.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
        assert (a - b).abs().max() > 1e-4
    else:
        with pytest.raises(ValueError, match="shift=0.5 sets a flow-matching policy's time grid"):
            eval_cli.run(shifted)
    spaced = {**shifted, "shift": None, "spacing": "leading", "out": str(tmp_path / "ev4")}
    if policy == "unet_ddpm":
        assert eval_cli.run(spaced)["spacing"] == "leading" and res["spacing"] == "trailing"
    else:
        with pytest.raises(ValueError, match="spacing=leading sets a DDPM policy's timesteps"):
            eval_cli.run(spaced)
    with pytest.raises(ValueError, match=r"n_action_steps \(16\) exceeds the horizon \(16\)"):
        policy_obj.set_n_action_steps(16)


def test_checkpoint_for_another_task_or_a_foreign_config_fails_clearly(train_config, tmp_path):
    train_run.run(train_config(tmp_path / "run", "mlp_bc"))
    # The installed console script, through hydra, with the defaults of configs/eval.yaml.
    cli = subprocess.run(["diffpolicy-eval", f"checkpoint={tmp_path / 'run'}", "n_episodes=2", "n_envs=2",
                          "video_episodes=0"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "success" in cli.stdout and (tmp_path / "run/eval/regression/summary.json").is_file()
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(ValueError, match="trained on 'diffpolicy/TwoPath-v0', not 'diffpolicy/PushT-v0'"):
        load_policy(tmp_path / "run", expect_task="diffpolicy/PushT-v0")
    ckpt = tmp_path / "run/checkpoints" / (tmp_path / "run/checkpoints/latest").read_text().strip()
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    cfg["policy"]["hidden"] = [64]
    (ckpt / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="does not match its config"):
        load_policy(tmp_path / "run")


@pytest.mark.parametrize("successes", [0, 3, 5])
def test_summary_plot_and_interval_at_the_extremes(tmp_path, successes):
    from diffpolicy.eval.rollout import plot_summary, summarize, wilson_interval

    episodes = [{"episode": i, "success": i < successes, "max_reward": 1.0 if i < successes else 0.3,
                 "final_reward": 0.2, "length": 10} for i in range(5)]
    summary = summarize(episodes)
    lo, hi = summary["success_ci95"]
    assert 0 <= lo <= summary["success_rate"] + 1e-12 and summary["success_rate"] - 1e-12 <= hi <= 1
    plot_summary(summary, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert wilson_interval(50, 100)[0] < 0.5 < wilson_interval(50, 100)[1]


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".yaml") for p in
                                        resources.files("diffpolicy.configs").joinpath("policy").iterdir()
                                        if p.name.endswith(".yaml")))
def test_every_shipped_policy_config_builds_a_policy_at_pusht_shapes(name):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from diffpolicy.core.normalize import Normalizer
    from diffpolicy.policy.factory import build_policy

    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = OmegaConf.to_container(compose("train", overrides=[f"policy={name}"]), resolve=True)
    assert cfg["policy"]["name"] == name
    data = {"keypoint": np.random.rand(50, 18), "agent_pos": np.random.rand(50, 2), "action": np.random.rand(50, 2)}
    norm = Normalizer.fit(data, {k: "minmax" for k in data})
    policy = build_policy(cfg["policy"], norm, {"keypoint": (18,), "agent_pos": (2,)}, [], 2)
    obs = {"keypoint": torch.rand(2, policy.n_obs_steps, 18), "agent_pos": torch.rand(2, policy.n_obs_steps, 2)}
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (2, cfg["policy"]["n_action_steps"], 2)
    assert out["action_pred"].shape == (2, cfg["policy"]["horizon"], 2) and torch.isfinite(out["action"]).all()


def test_zero_evaluation_episodes_skip_the_final_evaluation(train_config, tmp_path, capsys):
    config = train_config(tmp_path / "run", "mlp_bc")
    config["training"]["eval"] = {"n_episodes": 0}
    config["training"]["eval_every"] = 0
    assert train_run.run(config) == {}
    assert (tmp_path / "run/checkpoints/latest").is_file() and not (tmp_path / "run/eval").exists()
    assert "no final evaluation" in capsys.readouterr().out
