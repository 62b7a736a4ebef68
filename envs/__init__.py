"""MuJoCo tasks of diffpolicy, registered with gymnasium on import.

Installed as ``diffpolicy.envs`` (the top-level ``envs/`` folder of the repository)::

    import gymnasium as gym
    import diffpolicy.envs  # noqa: F401  (registers the ids below)
    env = gym.make("diffpolicy/PushT-v0", obs_type="state")

Observation modes shared by every task (``obs_type``):
  - ``"state"``: a bounded ``Box``, the task's low-dim state vector (also the ``state`` key below);
  - ``"dict"``: a ``Dict`` of named low-dim arrays (always contains ``state``);
  - ``"pixels"``: the ``"dict"`` keys plus camera images, ``uint8`` ``(H, W, 3)``.
Dict keys are the dataset keys: a demo collected from a ``Dict`` observation stores ``data/<key>``.
"""

from gymnasium.envs.registration import register

register(id="diffpolicy/PushT-v0", entry_point="diffpolicy.envs.pusht:PushTEnv", max_episode_steps=300)
register(id="diffpolicy/TwoPath-v0", entry_point="diffpolicy.envs.two_path:TwoPathEnv", max_episode_steps=100)
register(id="diffpolicy/ArmPick-v0", entry_point="diffpolicy.envs.arm_pick:ArmPickEnv", max_episode_steps=200)
