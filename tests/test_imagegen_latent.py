"""Latent diffusion in the image module: the autoencoder, the generator in its latent space, the CLI end to end."""

import shutil

import imageio.v3 as iio
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from diffpolicy.cli import imagegen as cli
from diffpolicy.imagegen.autoencoder import DigitAutoencoder, build_autoencoder, load_autoencoder
from diffpolicy.imagegen.data import DigitBatches, load_digits_splits
from diffpolicy.imagegen.model import build_generator, load_generator
from diffpolicy.policy.checkpoint import save_checkpoint
from diffpolicy.training.loop import TrainConfig, train

AE = {"image_size": 8, "channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4,
      "norm_num_groups": 4}  # 8x8 -> (4, 4, 4)
UNET = {"block_out_channels": [8, 16], "attention_levels": [False, True], "norm_num_groups": 4}
TINY_TRAIN = TrainConfig(steps=3, batch_size=8, lr=2e-3, warmup_steps=1, checkpoint_every=3, log_every=1)


@pytest.fixture(scope="module")
def digits8():
    return load_digits_splits(size=8)


def tiny_autoencoder(fit_on=None, **kw):
    torch.manual_seed(0)
    ae = build_autoencoder({**AE, **kw})
    if fit_on is not None:
        ae.fit_scaling_factor(fit_on)
    return ae


def save_autoencoder(ae, run_dir, model_cfg=AE):
    """An autoencoder checkpoint as `diffpolicy-imagegen autoencoder` writes it (model + EMA, config)."""
    return save_checkpoint(run_dir / "checkpoints", 1, {"model": ae.state_dict(), "ema": ae.state_dict()},
                           {"autoencoder": {"model": dict(model_cfg)}})


def latent_cfg(autoencoder_path, objective=None):
    return {"data": {"image_size": 8}, "model": {**UNET, "label_dropout": 0.1},
            "objective": objective or {"type": "flow"}, "latent": {"autoencoder": str(autoencoder_path)}}


def test_autoencoder_shapes_range_and_errors(digits8):
    train_split, _ = digits8
    ae = tiny_autoencoder()
    x = train_split.images[:5]
    assert ae.latent_shape == (4, 4, 4)
    with pytest.raises(RuntimeError, match="scaling_factor is not fitted"):
        ae.encode(x)
    ae.fit_scaling_factor(train_split.images)
    z = ae.encode(x)
    assert z.shape == (5, 4, 4, 4)
    with torch.no_grad():
        y = ae.decode(torch.randn(5, 4, 4, 4) * 10)  # far outside the data: still clamped
    assert y.shape == (5, 1, 8, 8) and float(y.abs().max()) <= 1.0
    loss = ae({"image": x, "label": train_split.labels[:5]}, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"expected \(B, 1, 8, 8\)"):
        ae.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expected \(B, 4, 4, 4\)"):
        ae.decode(torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match=r"unknown keys \['depth'\]"):
        build_autoencoder({**AE, "depth": 3})
    with pytest.raises(ValueError, match="not divisible"):
        DigitAutoencoder(image_size=10, block_out_channels=(8, 16, 16), norm_num_groups=4)
    with pytest.raises(ValueError, match="reconstruction 'huber'"):
        DigitAutoencoder(image_size=8, block_out_channels=(8, 16), norm_num_groups=4, reconstruction="huber")


def test_training_steps_lower_the_reconstruction_loss(digits8, tmp_path):
    train_split, _ = digits8
    ae = tiny_autoencoder()
    batch = DigitBatches(train_split, 64)(0, torch.Generator().manual_seed(1))

    def loss():
        with torch.no_grad():
            return float(ae(batch, torch.Generator().manual_seed(2)))

    before = loss()
    cfg = TrainConfig(steps=30, batch_size=32, lr=3e-3, warmup_steps=1, checkpoint_every=30, log_every=10)
    train(ae, DigitBatches(train_split, cfg.batch_size), cfg, tmp_path, {}, device=torch.device("cpu"))
    after = loss()
    assert after < 0.7 * before, (before, after)


def test_the_scaling_factor_gives_unit_variance_latents_and_is_saved(digits8):
    train_split, held = digits8
    ae = tiny_autoencoder().requires_grad_(False)
    raw_std = float(ae.posterior(train_split.images).mean.std())
    scale = ae.fit_scaling_factor(train_split.images)
    assert scale == pytest.approx(1 / raw_std, rel=1e-4)
    assert float(ae.encode(train_split.images).std()) == pytest.approx(1.0, abs=1e-3)
    assert 0.8 < float(ae.encode(held.images).std()) < 1.25  # held-out images: close, not exact
    state = ae.state_dict()
    assert float(state["scaling_factor"]) == pytest.approx(scale)
    other = tiny_autoencoder()
    other.load_state_dict(state)
    assert torch.equal(other.encode(held.images[:4]), ae.encode(held.images[:4]))


def test_latent_generator_trains_frozen_generates_and_reloads_from_its_checkpoint(digits8, tmp_path):
    train_split, _ = digits8
    ae = tiny_autoencoder(fit_on=train_split.images)
    save_autoencoder(ae, tmp_path / "ae")
    cfg = latent_cfg(tmp_path / "ae")
    torch.manual_seed(0)
    gen = build_generator(cfg)
    assert cfg["latent"]["model"] == AE  # recorded for the saved config
    assert gen.sample_shape == (4, 4, 4) and gen.net.unet.config.in_channels == 4
    frozen = {k: v.clone() for k, v in gen.autoencoder.state_dict().items()}
    assert all(not p.requires_grad for p in gen.autoencoder.parameters())
    train(gen, DigitBatches(train_split, TINY_TRAIN.batch_size), TINY_TRAIN, tmp_path / "gen", cfg,
          device=torch.device("cpu"))
    assert gen.training and not gen.autoencoder.training  # the loop's model.train() left it in eval mode
    assert all(torch.equal(v, frozen[k]) for k, v in gen.autoencoder.state_dict().items())
    assert any(k.startswith("autoencoder.") for k in gen.state_dict())

    labels = torch.tensor([0, 3, 9])
    gen.eval()
    out = gen.generate(labels, sampler="euler", steps=2, guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 8, 8) and float(out.abs().max()) <= 1.0 and torch.isfinite(out).all()

    shutil.rmtree(tmp_path / "ae")  # the generator's checkpoint alone must rebuild it
    loaded, loaded_cfg, _ = load_generator(tmp_path / "gen", use_ema=False)
    assert loaded_cfg["latent"]["model"] == AE
    again = loaded.generate(labels, sampler="euler", steps=2, guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(loaded.autoencoder.scaling_factor, ae.scaling_factor)


@pytest.mark.parametrize("objective", [{"type": "flow"}, {"type": "ddpm", "clip_x0": None}])
def test_latent_loss_is_the_objective_on_the_encoded_latents(digits8, tmp_path, objective):
    train_split, _ = digits8
    ae = tiny_autoencoder(fit_on=train_split.images)
    save_autoencoder(ae, tmp_path / "ae")
    gen = build_generator(latent_cfg(tmp_path / "ae", objective))
    batch = {"image": train_split.images[:6], "label": train_split.labels[:6]}
    gen.label_dropout = 0.0
    loss = gen(batch, torch.Generator().manual_seed(3))
    direct = gen.objective.loss(gen.net, ae.encode(batch["image"]), batch["label"], torch.Generator().manual_seed(3))
    assert torch.allclose(loss, direct)


def test_latent_autoencoder_path_errors(digits8, tmp_path):
    train_split, _ = digits8
    # A pixel-space generator checkpoint is not an autoencoder checkpoint.
    pixel_cfg = {"data": {"image_size": 8}, "model": UNET, "objective": {"type": "flow"}}
    torch.manual_seed(0)
    pixel = build_generator(pixel_cfg)
    assert pixel.autoencoder is None and not any(k.startswith("autoencoder") for k in pixel.state_dict())
    save_checkpoint(tmp_path / "pixel" / "checkpoints", 1, {"model": pixel.state_dict(), "ema": pixel.state_dict()},
                    pixel_cfg)
    with pytest.raises(ValueError, match="is not an autoencoder checkpoint: its ema.safetensors has no "
                                         "'scaling_factor'"):
        build_generator(latent_cfg(tmp_path / "pixel"))
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        build_generator(latent_cfg(tmp_path / "nowhere"))
    save_autoencoder(tiny_autoencoder(), tmp_path / "unfitted")
    with pytest.raises(ValueError, match="scaling_factor was never fitted"):
        load_autoencoder(tmp_path / "unfitted")
    with pytest.raises(ValueError, match="latent.autoencoder is required"):
        build_generator(latent_cfg("???"))
    ae = tiny_autoencoder(fit_on=train_split.images)
    save_autoencoder(ae, tmp_path / "ae")
    with pytest.raises(ValueError, match="the autoencoder takes 1-channel 8px images; the generator's data are "
                                         "1-channel 16px"):
        build_generator({**latent_cfg(tmp_path / "ae"), "data": {"image_size": 16}})
    with pytest.raises(ValueError, match="in latent space the U-Net runs on 4x4 latents"):
        build_generator({**latent_cfg(tmp_path / "ae"), "model": {**UNET, "block_out_channels": [8, 8, 8, 8],
                                                                  "attention_levels": None}})


@pytest.mark.parametrize("group", ["latent_flow", "latent_ddpm"])
def test_shipped_latent_configs_compose_and_build(group, tmp_path):
    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = OmegaConf.to_container(compose("imagegen", overrides=[f"imagegen={group}"]), resolve=True)
    assert cfg["name"] == group and cfg["latent"]["autoencoder"] == "???"
    assert cfg["model"]["block_out_channels"] == [64, 128]  # the group's U-Net, not imagegen.yaml's pixel one
    assert cfg["objective"].get("clip_x0") is None
    shipped_ae = {"image_size": cfg["data"]["image_size"], "channels": 1, **cfg["autoencoder"]["model"]}
    torch.manual_seed(0)
    ae = build_autoencoder(shipped_ae)
    ae.scaling_factor.fill_(1.0)
    assert ae.latent_shape == (4, 4, 4)
    save_autoencoder(ae, tmp_path / "ae", shipped_ae)
    cfg["latent"]["autoencoder"] = str(tmp_path / "ae")
    gen = build_generator(cfg)
    out = gen.generate(torch.tensor([1, 2]), sampler="euler", steps=1, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16)


def cli_config(run_dir, *overrides):
    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = compose("imagegen", overrides=[
            f"run_dir={run_dir}", "data.image_size=8", "model.block_out_channels=[8,16]",
            "model.attention_levels=[false,true]", "model.norm_num_groups=4", "training.steps=3",
            "training.batch_size=8", "training.warmup_steps=1", "training.checkpoint_every=2", "device=cpu",
            "autoencoder.model.block_out_channels=[8,16]", "autoencoder.model.norm_num_groups=4",
            "autoencoder.training.steps=4", "autoencoder.training.batch_size=8",
            "autoencoder.training.warmup_steps=1", "autoencoder.training.checkpoint_every=2", "autoencoder.per_class=3",
            "sample.steps=2", "sample.per_class=3", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_cli_autoencoder_then_latent_train_then_sample(tmp_path, capsys):
    ae_dir, gen_dir = tmp_path / "ae", tmp_path / "latent"
    grid = cli.run(cli_config(ae_dir, "mode=autoencoder"))
    out = capsys.readouterr().out
    assert grid == ae_dir / "reconstructions.png" and str(grid.resolve()) in out
    assert "held-out reconstruction error: L1" in out and (ae_dir / "reconstruction.json").is_file()
    # 10 classes x (originals row + reconstructions row), 3 columns of 8px digits scaled 4x
    assert iio.imread(grid).shape == (20 * (8 * 4 + 1) + 1, 3 * (8 * 4 + 1) + 1)
    ae, model_cfg, ckpt = load_autoencoder(ae_dir)
    assert ckpt.name == "step_00000004" and ae.fitted and model_cfg["image_size"] == 8

    cli.run(cli_config(gen_dir, "imagegen=latent_flow", f"latent.autoencoder={ae_dir}",
                       "model.block_out_channels=[8,16]", "model.norm_num_groups=4"))
    assert (gen_dir / "samples" / "dpmpp_2m_2steps_g2.png").is_file()
    shutil.rmtree(ae_dir)
    path = cli.run(cli_config(gen_dir, "mode=sample", "sample.sampler=euler", "sample.classes=[4,7]",
                              f"sample.out={tmp_path / 'latent.png'}"))
    assert iio.imread(path).shape == (2 * (8 * 4 + 1) + 1, 3 * (8 * 4 + 1) + 1)

    with pytest.raises(ValueError, match=r"unknown keys \['epochs'\]"):
        cli.run(cli_config(tmp_path / "bad", "mode=autoencoder", "+autoencoder.training.epochs=2"))
