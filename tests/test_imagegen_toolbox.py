"""The image module's toolbox: noise-conditional classifier + classifier guidance, Langevin correction and
likelihoods, through diffpolicy-imagegen's modes and the generator's methods."""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from diffpolicy.cli import imagegen as cli
from diffpolicy.core.samplers import Langevin
from diffpolicy.imagegen.classifier import build_classifier, load_classifier
from diffpolicy.imagegen.data import load_digits_splits
from diffpolicy.imagegen.model import load_generator

TINY = ["data.image_size=8", "model.block_out_channels=[8,16]", "model.attention_levels=[false,true]",
        "model.norm_num_groups=4", "training.steps=3", "training.batch_size=8", "training.warmup_steps=1",
        "training.checkpoint_every=3", "device=cpu", "sample.steps=2", "sample.per_class=2",
        "classifier.channels=[8,16]", "classifier.norm_num_groups=4", "classifier.time_embed_dim=16",
        "classifier.training.steps=3", "classifier.training.checkpoint_every=3"]


def config(run_dir, *overrides):
    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = compose("imagegen", overrides=[f"run_dir={run_dir}", *TINY, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toolbox")
    cli.run(config(root / "flow", "imagegen=flow", "sample.guidance=0"))
    cli.run(config(root / "clf_flow", "imagegen=flow", "mode=classifier"))
    cli.run(config(root / "clf_ddpm", "imagegen=ddpm", "mode=classifier"))
    return root


def test_classifier_run_reports_accuracy_and_loads(runs, capsys):
    acc = json.loads((runs / "clf_flow" / "accuracy.json").read_text())["held_out_accuracy_by_flow_time"]
    assert set(acc) == {"0", "0.25", "0.5", "0.75", "0.9"} and all(0 <= v <= 1 for v in acc.values())
    clf = load_classifier(runs / "clf_flow")
    assert clf.logits(torch.zeros(3, 1, 8, 8), torch.tensor([500.0])).shape == (3, 10)
    with pytest.raises(ValueError, match="not a noise-conditional classifier checkpoint"):
        load_classifier(runs / "flow")


def test_guided_and_corrected_sampling_from_the_cli(runs, capsys):
    out = cli.run(config(runs / "flow", "mode=sample", "sample.guidance=1", f"sample.classifier={runs / 'clf_flow'}",
                         "sample.classifier_scale=2", "sample.corrector_steps=1"))
    assert out.name == "dpmpp_2m_2steps_g1_c1snr0.16_cls2.png" and out.is_file()
    lang = cli.run(config(runs / "flow", "mode=sample", "sample.sampler=langevin", "sample.guidance=0"))
    assert lang.is_file()
    with pytest.raises(ValueError, match="needs sample.classifier"):
        cli.run(config(runs / "flow", "mode=sample", "sample.classifier_scale=2"))
    with pytest.raises(ValueError, match="trained on a DDPM path that differs from the generator's FlowMatching"):
        cli.run(config(runs / "flow", "mode=sample", f"sample.classifier={runs / 'clf_ddpm'}",
                       "sample.classifier_scale=1"))


def test_classifier_guidance_changes_samples_and_the_corrector_is_seeded(runs):
    gen, _, _ = load_generator(runs / "flow")
    clf = load_classifier(runs / "clf_flow")
    labels = torch.arange(10)
    kw = dict(sampler="euler", steps=3)
    plain = gen.generate(labels, generator=torch.Generator().manual_seed(0), **kw)
    guided = gen.generate(labels, generator=torch.Generator().manual_seed(0), classifier=clf, classifier_scale=3.0,
                          **kw)
    assert not torch.allclose(plain, guided)
    a, b = (gen.generate(labels, generator=torch.Generator().manual_seed(1), corrector=Langevin(0.1, 2), **kw)
            for _ in range(2))
    assert torch.equal(a, b)


def test_likelihood_modes_write_bits_per_dim(runs, capsys):
    for method, steps in (("ode", 2), ("vlb", 8)):
        path = cli.run(config(runs / "flow", "mode=likelihood", f"likelihood.method={method}",
                              f"likelihood.steps={steps}", "likelihood.n=12"))
        result = json.loads(path.read_text())
        assert path.name == f"likelihood_{method}_{steps}.json" and str(path.resolve()) in capsys.readouterr().out
        assert result["n"] == 12 and math.isfinite(result["bits_per_dim"]) and result["bits_per_dim"] > 0


def test_generator_likelihoods_conditional_unconditional_and_errors(runs):
    gen, _, _ = load_generator(runs / "flow")
    _, held = load_digits_splits(8)
    x, y = held.images[:6], held.labels[:6]
    cond = gen.bits_per_dim(x, y, steps=2, generator=torch.Generator().manual_seed(0))
    uncond = gen.bits_per_dim(x, None, steps=2, generator=torch.Generator().manual_seed(0))
    assert cond.shape == (6,) and not torch.allclose(cond, uncond)
    exact = gen.bits_per_dim(x[:1], y[:1], steps=1, trace="exact", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(exact).all()
    with pytest.raises(ValueError, match="unknown likelihood method 'elbo'"):
        gen.bits_per_dim(x, y, method="elbo")
    with pytest.raises(ValueError, match=r"images have shape \(6, 8, 8\)"):
        gen.bits_per_dim(x[:, 0], y)


def test_noisy_classifier_learns(runs):
    """A few steps on one batch of noised digits lower its cross-entropy (the loss reaches the weights)."""
    cfg = config(runs / "unused", "imagegen=flow")
    torch.manual_seed(0)
    clf = build_classifier(cfg)
    train, _ = load_digits_splits(8)
    batch = {"image": train.images[:64], "label": train.labels[:64]}
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = clf(batch, torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
