"""diffpolicy-eval: success rate, rewards, videos and a summary plot of a trained policy.

    diffpolicy-eval checkpoint=runs/pusht/unet_ddpm_... n_episodes=100 sampler=ddim steps=4 [n_action_steps=2]
    diffpolicy-eval checkpoint=runs/pusht/unet_flow_h8_... sampler=euler steps=4 shift=0.2   # flow time grid
    diffpolicy-eval checkpoint=runs/pusht/unet_ddpm_h8_... sampler=ddim steps=16 spacing=leading   # DDPM's

Reports the success rate with a 95% confidence interval and, separately, the mean per-episode *max* reward (for
PushT the max-coverage score that the Diffusion Policy paper reports; it is much higher than the success rate at
coverage >= 0.95, and the two are often confused).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ..policy.factory import load_policy
from ..policy.rollout import evaluate, save_summary
from ..training.checkpoint import resolve_checkpoint
from ..training.loop import pick_device


def run(cfg: dict) -> dict:
    device = pick_device(cfg.get("device", "auto"))
    ckpt = resolve_checkpoint(cfg["checkpoint"])
    policy, config = load_policy(ckpt, use_ema=cfg.get("use_ema", True), device=device)
    task = config["task"]
    kwargs = {k: cfg[k] for k in ("sampler", "steps") if cfg.get(k) is not None}
    if hasattr(policy, "sampler"):
        label = f"{kwargs.get('sampler', policy.sampler)}_{kwargs.get('steps', policy.steps)}"
    else:  # a regression policy (MLP-BC) has no sampler or step count
        label = "regression"
    if cfg.get("n_action_steps") is not None:
        policy.set_n_action_steps(cfg["n_action_steps"])
        label += f"_exec{policy.n_action_steps}"
    if cfg.get("shift") is not None:
        policy.set_sampling_shift(cfg["shift"])
        label += f"_shift{cfg['shift']:g}"
    if cfg.get("spacing") is not None:
        policy.set_sampling_spacing(cfg["spacing"])
        label += f"_{cfg['spacing']}"
    out = Path(cfg["out"]) if cfg.get("out") else ckpt.parent.parent / "eval" / label
    print(f"evaluating {ckpt} on {task['env_id']} ({label}); writing to {out.resolve()}")
    summary = evaluate(policy, task["env_id"], task.get("env_kwargs", {}), task["obs_keys"], task.get("image_keys", []),
                       task.get("crop_shape"), n_episodes=cfg["n_episodes"], seed=cfg["seed"], n_envs=cfg["n_envs"],
                       video_episodes=cfg["video_episodes"], video_dir=out / "videos", device=device, **kwargs)
    summary.update(checkpoint=str(ckpt), env_id=task["env_id"], policy=config["policy"]["name"],
                   n_action_steps=policy.n_action_steps, **kwargs)
    for key, attr in (("shift", "sampling_shift"), ("spacing", "spacing")):
        if hasattr(getattr(policy, "objective", None), attr):
            summary[key] = getattr(policy.objective, attr)
    save_summary(summary, out, f"{task['env_id']} {config['policy']['name']} {label}")
    return summary


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="eval", version_base=None)
def _main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
