"""Scripted demonstrators, one per task.

``make_expert(env_id, env, seed)`` returns an object with ``reset()`` (call after ``env.reset``) and
``act(obs) -> action``; experts may read privileged simulator state through ``env.unwrapped``.
"""

import importlib

EXPERTS = {
    "diffpolicy/PushT-v0": "diffpolicy.envs.experts.pusht:PushTExpert",
    "diffpolicy/TwoPath-v0": "diffpolicy.envs.experts.two_path:TwoPathExpert",
    "diffpolicy/ArmPick-v0": "diffpolicy.envs.experts.arm_pick:ArmPickExpert",
}


def make_expert(env_id: str, env, seed: int | None = None):
    """Build the scripted expert of ``env_id`` acting in ``env`` (a gymnasium env, possibly wrapped)."""
    if env_id not in EXPERTS:
        raise KeyError(f"no scripted expert for env id {env_id!r}; known: {sorted(EXPERTS)}")
    module, name = EXPERTS[env_id].split(":")
    return getattr(importlib.import_module(module), name)(env.unwrapped, seed=seed)
