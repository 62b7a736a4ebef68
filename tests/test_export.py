"""Exported chunk functions: equal to eager PyTorch, runnable by the Controller, refused with clear errors."""

import json
import subprocess

import numpy as np
import pytest
import torch

from diffpolicy.control.controller import Controller
from diffpolicy.export import NotExportable, export_checkpoint, load_artifact
from diffpolicy.export.artifact import example_inputs
from diffpolicy.export.chunk import ChunkFunction
from diffpolicy.policy.factory import load_policy

pytest.importorskip("onnxruntime")


def states(n, seed=0):
    return [{"state": s, "agent_pos": s[:2]} for s in np.random.default_rng(seed).uniform(-1, 1, (n, 4))
            .astype(np.float32)]


@pytest.mark.parametrize("denoiser,objective,sampler", [("unet", "ddpm", "ddim"), ("transformer", "flow", "euler")])
def test_onnx_chunks_equal_eager_pytorch_and_drive_the_controller(tiny_checkpoint, tmp_path, denoiser, objective,
                                                                   sampler):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", objective=objective, denoiser=denoiser)
    meta = export_checkpoint(ckpt, tmp_path / "art", sampler=sampler, steps=2, fmt="onnx")
    assert meta["max_abs_diff_vs_eager"] < 1e-4 and (tmp_path / "art/chunk.onnx").is_file()
    assert json.loads((tmp_path / "art/export.json").read_text())["sampler"] == sampler
    policy, config = load_policy(ckpt)
    fn = ChunkFunction(policy, policy.sampling_plan(sampler, 2)).eval()
    art = load_artifact(tmp_path / "art", num_threads=1)
    for batch in (1, 5):  # the batch dimension is dynamic
        inputs = example_inputs(fn, {"state": (4,)}, batch=batch, seed=batch)
        with torch.no_grad():
            want = fn(*inputs)
            eager = policy.predict_action({"state": inputs[0]}, plan=policy.sampling_plan(sampler, 2),
                                          generator=None)  # shapes only: its noise is its own
        got = art.run(inputs)
        assert got[0].shape == (batch, 16, 2) == eager["action_pred"].shape
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-4)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-4)
    # the controller on the artifact acts as the controller on the checkpoint (same seed, same noise)
    obs = states(20)
    a = Controller.from_artifact(tmp_path / "art", action_space="data", seed=3, num_threads=1)
    b = Controller.from_checkpoint(ckpt, device="cpu", sampler=sampler, steps=2, action_space="data", seed=3)
    np.testing.assert_allclose(np.stack([a.act(o) for o in obs]), np.stack([b.act(o) for o in obs]), atol=1e-4)
    assert a.stats()["chunks"] == 3
    with pytest.raises(ValueError, match=f"exported with sampler={sampler} steps=2 .* steps=8 needs another export"):
        a.set_sampling(steps=8)
    with pytest.raises(ValueError, match="smoothing='rtc' needs a diffusion/flow policy"):
        Controller.from_artifact(tmp_path / "art", mode="async", smoothing="rtc")


def test_torch_export_artifact_is_opened_only_when_trusted(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", objective="flow")
    meta = export_checkpoint(ckpt, tmp_path / "art", sampler="heun", steps=2, fmt="torch_export")
    assert meta["max_abs_diff_vs_eager"] < 1e-5 and (tmp_path / "art/chunk.pt2").is_file()
    with pytest.raises(ValueError, match="torch.export.load may unpickle.*trusted=True"):
        load_artifact(tmp_path / "art")
    a = Controller.from_artifact(tmp_path / "art", trusted=True, action_space=None, seed=1)
    b = Controller.from_checkpoint(ckpt, device="cpu", sampler="heun", steps=2, action_space=None, seed=1)
    obs = states(9, seed=2)
    np.testing.assert_allclose(np.stack([a.act(o) for o in obs]), np.stack([b.act(o) for o in obs]), atol=1e-5)


def test_what_cannot_be_exported_is_refused_by_name(tiny_checkpoint, train_config, tmp_path):
    from diffpolicy.training import run as train_run

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(NotExportable, match=r"step_00000000: sampler 'ddpm' draws fresh noise at every step"):
        export_checkpoint(ckpt, tmp_path / "a", sampler="ddpm", steps=3)
    config = train_config(tmp_path / "bc", "mlp_bc")
    config["training"].update(steps=2, eval={"n_episodes": 0})
    train_run.run(config)
    with pytest.raises(NotExportable, match="holds a MLPBCPolicy, which has none"):
        export_checkpoint(tmp_path / "bc", tmp_path / "b")
    with pytest.raises(ValueError, match="format must be one of"):
        export_checkpoint(ckpt, tmp_path / "c", fmt="tflite")
    with pytest.raises(FileNotFoundError, match="has no export.json: not a diffpolicy-export artifact"):
        load_artifact(tmp_path)
    assert not (tmp_path / "a").exists()  # nothing written for a refused export


def test_cli_prints_where_it_wrote(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", objective="flow")
    cli = subprocess.run(["diffpolicy-export", f"checkpoint={ckpt}", "sampler=euler", "steps=2",
                          "format=torch_export", f"out={tmp_path / 'art'}"], capture_output=True, text=True,
                         timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"wrote {tmp_path / 'art' / 'chunk.pt2'}" in cli.stdout and "largest difference" in cli.stdout


@pytest.mark.parametrize("encoder", ["conv", "resnet18_gn"])
def test_camera_policies_export_with_their_image_encoder(tmp_path, encoder):
    """The image encoder (a conv net or ResNet-18-GN with spatial-softmax keypoints) is part of the exported graph."""
    from diffpolicy.core.normalize import Normalizer
    from diffpolicy.policy.checkpoint import save_checkpoint
    from diffpolicy.policy.factory import build_policy

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    norm = Normalizer.fit({"agent_pos": rng.random((50, 2)).astype(np.float32),
                           "action": rng.random((50, 2)).astype(np.float32)}, {"agent_pos": "minmax", "action": "minmax"})
    pcfg = {"name": "tiny_image", "type": "diffusion", "horizon": 8, "n_obs_steps": 2, "n_action_steps": 2,
            "objective": {"type": "flow"}, "sampler": "euler", "steps": 2,
            "unet": {"down_dims": [16, 32], "kernel_size": 5, "n_groups": 8, "time_embed_dim": 32},
            "encoder": {"image_encoder": encoder, "image_width": 16, "image_features": 16, "image_channels": [8, 16],
                        "image_strides": [2, 1], "image_keypoints": 8}}
    shapes = {"img": (3, 24, 24), "agent_pos": (2,)}
    policy = build_policy(pcfg, norm, shapes, ["img"], 2)
    config = {"policy": pcfg, "shapes": {"obs": {k: list(v) for k, v in shapes.items()}, "action_dim": 2},
              "task": {"name": "cam", "env_id": "cam", "obs_keys": ["img", "agent_pos"], "image_keys": ["img"],
                       "action_key": "action", "crop_shape": [24, 24]}}
    state = policy.state_dict()
    save_checkpoint(tmp_path / "ckpt", 0, {"model": state, "ema": state}, config)
    meta = export_checkpoint(tmp_path / "ckpt", tmp_path / "art", fmt="torch_export")
    assert meta["max_abs_diff_vs_eager"] < 1e-4 and meta["image_keys"] == ["img"]
    assert meta["inputs"] == {"agent_pos": [-1, 2, 2], "img": [-1, 2, 3, 24, 24]}
