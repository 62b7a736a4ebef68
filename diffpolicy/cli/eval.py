"""diffpolicy-eval: success rate, rewards, videos and a summary plot of a trained policy.

    diffpolicy-eval checkpoint=runs/pusht/unet_ddpm_... n_episodes=100 sampler=ddim steps=4 [n_action_steps=2]
    diffpolicy-eval checkpoint=runs/pusht/unet_flow_h8_... sampler=euler steps=4 shift=0.2   # flow time grid
    diffpolicy-eval checkpoint=runs/pusht/unet_ddpm_h8_... sampler=ddim steps=16 spacing=leading   # DDPM's
    diffpolicy-eval checkpoint=... ++env_kwargs.<key>=<value>   # the task's env with other settings

Reports the success rate with a 95% confidence interval and, separately, the mean per-episode *max* reward (for
PushT the max-coverage score that the Diffusion Policy paper reports; it is much higher than the success rate at
coverage >= 0.95, and the two are often confused).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ..accel import accelerate, tune_process
from ..eval.rollout import evaluate, save_summary
from ..policy.checkpoint import resolve_checkpoint
from ..policy.factory import load_policy
from ..training.loop import pick_device


def run(cfg: dict) -> dict:
    device = pick_device(cfg.get("device", "auto"))
    ckpt = resolve_checkpoint(cfg["checkpoint"])
    policy, config = load_policy(ckpt, use_ema=cfg.get("use_ema", True), device=device)
    task = config["task"]
    if cfg.get("env_kwargs"):  # the same task under other env settings (a camera, a physics parameter)
        task = {**task, "env_kwargs": {**task.get("env_kwargs", {}), **cfg["env_kwargs"]}}
    if cfg.get("accel", True):
        accelerate(policy)
    plan = policy.sampling_plan(cfg.get("sampler"), cfg.get("steps"), shift=cfg.get("shift"),
                                spacing=cfg.get("spacing"))
    label = f"{plan.sampler}_{plan.steps}" if plan is not None else "regression"  # MLP-BC has no sampler
    if cfg.get("shift") is not None:
        label += f"_shift{cfg['shift']:g}"
    if cfg.get("spacing") is not None:
        label += f"_{cfg['spacing']}"
    if cfg.get("n_action_steps") is not None:
        policy.set_n_action_steps(cfg["n_action_steps"])
        label += f"_exec{policy.n_action_steps}"
    out = Path(cfg["out"]) if cfg.get("out") else ckpt.parent.parent / "eval" / label
    print(f"evaluating {ckpt} on {task['env_id']} ({label}); writing to {out.resolve()}")
    summary = evaluate(policy, task, n_episodes=cfg["n_episodes"], seed=cfg["seed"], n_envs=cfg["n_envs"],
                       video_episodes=cfg["video_episodes"], video_dir=out / "videos", device=device, plan=plan)
    summary.update(checkpoint=str(ckpt), env_id=task["env_id"], policy=config["policy"]["name"],
                   n_action_steps=policy.n_action_steps)
    if plan is not None:
        summary.update(sampler=plan.sampler, steps=plan.steps,
                       **{k: v for k, v in (("shift", plan.shift), ("spacing", plan.spacing)) if v is not None})
    save_summary(summary, out, f"{task['env_id']} {config['policy']['name']} {label}")
    return summary


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="eval", version_base=None)
def _main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    tune_process()  # before any tensor work: MKL reads its mode at its first call
    _main()


if __name__ == "__main__":
    main()
