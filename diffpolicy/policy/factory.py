"""Build policies from configuration dictionaries and load them back from checkpoints (no unpickling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..core.normalize import Normalizer
from ..core.objectives import make_objective
from ..nets.encoders import ObservationEncoder, place_for_device
from ..nets.transformer1d import TransformerDenoiser
from ..nets.unet1d import ConditionalUnet1D
from .base import Policy
from .checkpoint import load_config, load_tensors, resolve_checkpoint
from .diffusion import DiffusionPolicy
from .mlp_bc import MLPBCPolicy


def build_policy(cfg: Mapping[str, Any], normalizer: Normalizer, obs_shapes: Mapping[str, Sequence[int]],
                 image_keys: Sequence[str], action_dim: int) -> Policy:
    """A policy from its config (the ``policy`` group), the fitted normaliser and the data's shapes.

    ``obs_shapes`` are per-step event shapes as the encoder sees them (images ``(C, h, w)`` after cropping).
    """
    enc = cfg.get("encoder", {})
    encoder = ObservationEncoder(obs_shapes, image_keys, cfg["n_obs_steps"], enc.get("image_width", 64),
                                 enc.get("image_features", 64), enc.get("image_encoder", "resnet18_gn"),
                                 enc.get("image_keypoints", 32), enc.get("image_channels"), enc.get("image_strides"))
    geometry = dict(action_dim=action_dim, horizon=cfg["horizon"], n_obs_steps=cfg["n_obs_steps"],
                    n_action_steps=cfg["n_action_steps"])
    if cfg["type"] == "diffusion":
        net = build_denoiser(cfg, action_dim, encoder.out_dim)
        return DiffusionPolicy(normalizer, encoder, make_objective(cfg["objective"]), net, sampler=cfg["sampler"],
                               steps=cfg["steps"], noise_draws=cfg.get("noise_draws", 1), **geometry)
    if cfg["type"] == "mlp_bc":
        return MLPBCPolicy(normalizer, encoder, hidden=cfg.get("hidden", (512, 512, 512)), **geometry)
    raise ValueError(f"policy type must be 'diffusion' or 'mlp_bc', got {cfg['type']!r}")


DENOISERS = ("unet", "transformer")


def build_denoiser(cfg: Mapping[str, Any], action_dim: int, cond_dim: int) -> ConditionalUnet1D | TransformerDenoiser:
    """The denoising network of a diffusion policy config: ``denoiser: unet`` (default; the ``unet`` section) or
    ``transformer`` (the ``transformer`` section), conditioned on the observation embedding ``(B, cond_dim)``."""
    kind = cfg.get("denoiser", "unet")
    if kind == "unet":
        u = cfg.get("unet", {})
        return ConditionalUnet1D(action_dim, cond_dim, 0, u.get("down_dims", (256, 512, 1024)),
                                 u.get("kernel_size", 5), u.get("n_groups", 8), u.get("time_embed_dim", 256))
    if kind == "transformer":
        t = cfg.get("transformer", {})
        return TransformerDenoiser(action_dim, cond_dim, cfg["n_obs_steps"], cfg["horizon"], t.get("d_model", 256),
                                   t.get("n_layers", 8), t.get("n_heads", 4), t.get("time_embed_dim", 128),
                                   t.get("dropout", 0.1), t.get("causal", True))
    raise ValueError(f"policy.denoiser must be one of {DENOISERS}, got {kind!r}")


def load_policy(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu",
                expect_task: str | None = None) -> tuple[Policy, dict]:
    """Load ``(policy, config)`` from a checkpoint directory, a checkpoints root or a run directory.

    Only safetensors and YAML are read. ``expect_task`` (an env id) guards against evaluating a policy on a task it
    was not trained for.
    """
    ckpt = resolve_checkpoint(path)
    config = load_config(ckpt)
    for key in ("policy", "task", "shapes"):
        if key not in config:
            raise ValueError(f"{ckpt}/config.yaml has no '{key}' section: not a diffpolicy policy checkpoint")
    if expect_task is not None and config["task"]["env_id"] != expect_task:
        raise ValueError(f"checkpoint {ckpt} was trained on {config['task']['env_id']!r}, not {expect_task!r}")
    state = load_tensors(ckpt, "ema" if use_ema else "model", device)
    norm = Normalizer.from_state_dict({k[len("normalizer."):]: v for k, v in state.items()
                                       if k.startswith("normalizer.")})
    shapes = config["shapes"]
    policy = build_policy(config["policy"], norm, {k: tuple(v) for k, v in shapes["obs"].items()},
                          config["task"].get("image_keys", []), shapes["action_dim"])
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint {ckpt} does not match its config: {str(e).splitlines()[1].strip()}") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return place_for_device(policy, device).eval(), config


# Keys of a policy config that say how a policy samples or what it is called, not what its weights are.
NOT_ARCHITECTURE = ("name", "sampler", "steps")


def flat_config(cfg: Mapping[str, Any], prefix: str = "") -> dict:
    """A nested config as ``{"unet.down_dims": [...], ...}``."""
    out = {}
    for k, v in cfg.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def architecture_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The dotted keys where two policy configs differ in what their weights are (not name, sampler or steps); an
    empty list means one's weights load into the other."""
    fa, fb = flat_config(a), flat_config(b)
    return sorted(k for k in {*fa, *fb} if k.split(".")[0] not in NOT_ARCHITECTURE and fa.get(k) != fb.get(k))


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """``base`` with ``overrides`` merged in, section by section (a nested mapping merges, anything else replaces)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge_config(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
