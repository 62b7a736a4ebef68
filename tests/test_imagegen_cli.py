"""diffpolicy-imagegen: the hydra config composes, train/sample write where they say, resume is exact."""

import sys

import imageio.v3 as iio
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from diffpolicy.cli import imagegen as cli
from diffpolicy.imagegen.data import DigitBatches, load_digits_splits
from diffpolicy.imagegen.model import build_generator, load_generator
from diffpolicy.policy.checkpoint import load_tensors, load_train_state, resolve_checkpoint
from diffpolicy.training.loop import TrainConfig, train


def config(tmp_path, *overrides):
    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = compose("imagegen", overrides=[
            f"run_dir={tmp_path}", "data.image_size=8", "model.block_out_channels=[8,16]",
            "model.attention_levels=[false,true]", "model.norm_num_groups=4", "training.steps=3",
            "training.batch_size=8", "training.warmup_steps=1", "training.checkpoint_every=2", "device=cpu",
            "sample.steps=2", "sample.per_class=3", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_shipped_configs_compose(objective, tmp_path):
    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = OmegaConf.to_container(compose("imagegen", overrides=[f"imagegen={objective}"]), resolve=False)
    assert cfg["objective"]["type"] == objective and cfg["name"] == objective and cfg["mode"] == "train"
    assert set(cfg["training"]) <= {f for f in TrainConfig.__dataclass_fields__}
    gen = build_generator(cfg)
    assert gen.image_size == 16 and gen.label_dropout > 0


def test_train_then_sample_write_checkpoints_and_grids(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cli.run(config(run_dir, "imagegen=flow"))
    out = capsys.readouterr().out
    grid_path = run_dir / "samples" / "dpmpp_2m_2steps_g2.png"
    assert grid_path.is_file() and str(grid_path.resolve()) in out and str((run_dir / "checkpoints").resolve()) in out
    ckpt = resolve_checkpoint(run_dir)
    assert ckpt.name == "step_00000003" and (ckpt / "ema.safetensors").is_file()
    grid = iio.imread(grid_path)
    assert grid.shape == (10 * (8 * 4 + 1) + 1, 3 * (8 * 4 + 1) + 1)  # one row per class, 3 columns

    cfg = config(run_dir, "mode=sample", "sample.sampler=euler", "sample.steps=3", "sample.guidance=0",
                 "sample.classes=[2,5]", f"sample.out={tmp_path / 'two.png'}")
    assert cli.run(cfg) == tmp_path / "two.png"
    assert "wrote a sample grid to" in capsys.readouterr().out
    assert iio.imread(tmp_path / "two.png").shape[0] == 2 * (8 * 4 + 1) + 1

    with pytest.raises(ValueError, match=r"sample.classes \[10\]"):
        cli.run(config(run_dir, "mode=sample", "sample.classes=[10]"))
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        cli.run(config(run_dir, "mode=sample", "sample.sampler=rk4"))
    with pytest.raises(ValueError, match="mode='eval'"):
        cli.run(config(run_dir, "mode=eval"))
    with pytest.raises(FileNotFoundError, match="no checkpoints/latest"):
        cli.run(config(tmp_path / "empty", "mode=sample"))
    with pytest.raises(ValueError, match=r"training: unknown keys \['epochs'\]"):
        cli.run(config(tmp_path / "bad", "+training.epochs=3"))


def test_bare_mode_word_is_accepted(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "run", lambda cfg: seen.update(cfg))
    monkeypatch.setattr(sys, "argv", ["diffpolicy-imagegen", "sample", f"run_dir={tmp_path}",
                                      "hydra.output_subdir=null"])
    cli.main()
    assert seen["mode"] == "sample"


def test_resume_through_the_shared_loop_is_exact(tmp_path):
    cfg = config(tmp_path, "imagegen=ddpm", "training.steps=4")
    split, _ = load_digits_splits(8)
    tcfg = TrainConfig(**cfg["training"])

    def run(run_dir, resume=False, interrupt_at=None):
        torch.manual_seed(0)
        gen = build_generator(cfg)
        batches = DigitBatches(split, tcfg.batch_size)

        def batch_fn(step, g):
            if step == interrupt_at:
                raise KeyboardInterrupt
            return batches(step, g)

        train(gen, batch_fn, tcfg, run_dir, cfg, resume=resume, device=torch.device("cpu"))
        return gen

    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", interrupt_at=3)  # after the step-2 checkpoint
    resumed = run(tmp_path / "split", resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert load_train_state(resolve_checkpoint(tmp_path / "split"))["step"] == 4
    ema_a = load_tensors(resolve_checkpoint(tmp_path / "full"), "ema")
    ema_b = load_tensors(resolve_checkpoint(tmp_path / "split"), "ema")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # The checkpoint reloads into an equal generator (EMA weights), from its config alone.
    gen, loaded_cfg, _ = load_generator(tmp_path / "split")
    assert loaded_cfg["objective"]["type"] == "ddpm"
    assert all(torch.equal(v, ema_b[k]) for k, v in gen.state_dict().items())
