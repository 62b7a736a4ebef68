"""Image generation on the shared core: data, label dropout, guidance path, argument errors, metrics, grids."""

import numpy as np
import pytest
import torch

from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.imagegen.data import NUM_CLASSES, DigitBatches, load_digits_splits, upsample
from diffpolicy.imagegen.grid import grid_image, save_grid
from diffpolicy.imagegen.metrics import (
    DigitClassifier, _shift, accuracy, balanced_labels, frechet_distance, predict_features,
)
from diffpolicy.imagegen.model import ClassConditionalUNet, build_generator

TINY = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, True], "norm_num_groups": 4}


def tiny(objective="flow", label_dropout=0.1, size=8):
    torch.manual_seed(0)
    cfg = {"data": {"image_size": size}, "model": {**TINY, "label_dropout": label_dropout},
           "objective": {"type": objective}}
    return build_generator(cfg)


def test_digits_splits_are_stratified_seeded_and_in_range():
    train, held = load_digits_splits(size=16, held_out=0.2, seed=0)
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.float32
    assert len(train) + len(held) == 1797
    assert float(train.images.min()) == -1.0 and float(train.images.max()) == 1.0
    counts = torch.bincount(held.labels, minlength=NUM_CLASSES)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    again, held_again = load_digits_splits(size=16, held_out=0.2, seed=0)
    assert torch.equal(held.images, held_again.images)
    _, other = load_digits_splits(size=16, held_out=0.2, seed=1)
    assert not torch.equal(held.labels, other.labels)
    # No image is in both splits (compare the exact 8x8 sources via the identity upsampling).
    tr8, he8 = load_digits_splits(size=8, held_out=0.2, seed=0)
    tr_set = {bytes(np.asarray(x)) for x in tr8.images.numpy()}
    assert sum(bytes(np.asarray(x)) in tr_set for x in he8.images.numpy()) < 5  # only duplicate digits collide


def test_upsample_and_split_reject_bad_arguments():
    with pytest.raises(ValueError, match="multiple of 4"):
        load_digits_splits(size=18)
    with pytest.raises(ValueError, match="held_out"):
        load_digits_splits(held_out=1.0)
    with pytest.raises(ValueError, match="below the source"):
        upsample(torch.zeros(1, 1, 8, 8), 4)


def test_batches_are_a_function_of_the_step_generator():
    train, _ = load_digits_splits(size=8)
    fn = DigitBatches(train, 16)
    a = fn(3, torch.Generator().manual_seed(5))
    b = fn(3, torch.Generator().manual_seed(5))
    assert a["image"].shape == (16, 1, 8, 8) and a["label"].shape == (16,)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="batch_size"):
        DigitBatches(train, 0)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_unet_shapes_and_finite_loss(objective):
    gen = tiny(objective)
    assert isinstance(gen.objective, DDPM if objective == "ddpm" else FlowMatching)
    x = torch.randn(4, 1, 8, 8)
    out = gen.net(x, torch.tensor([0.0, 10.0, 50.0, 99.0]), torch.tensor([0, 3, 9, 10]))  # 10 is the null label
    assert out.shape == x.shape
    loss = gen({"image": x.clamp(-1, 1), "label": torch.tensor([0, 1, 2, 3])}, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert gen.net.unet.class_embedding.weight.grad is not None


def test_label_dropout_rate_and_determinism():
    gen = tiny(label_dropout=0.25)
    labels = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    dropped = gen.drop_labels(labels, torch.Generator().manual_seed(1))
    nulls = dropped == gen.null_label
    assert abs(nulls.float().mean().item() - 0.25) < 0.015
    assert torch.equal(dropped[~nulls], labels[~nulls])  # the others are untouched
    assert torch.equal(dropped, gen.drop_labels(labels, torch.Generator().manual_seed(1)))
    assert torch.equal(tiny(label_dropout=0.0).drop_labels(labels), labels)
    with pytest.raises(ValueError, match="label_dropout"):
        tiny(label_dropout=1.0)


class Spy(torch.nn.Module):
    """Wraps a net and records the labels of each call."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.calls, self.num_classes = net, [], net.num_classes

    def forward(self, x, t, labels):
        self.calls.append(labels.clone())
        return self.inner(x, t, labels)


def test_guidance_runs_conditional_and_null_passes_as_one_batch():
    gen = tiny()
    spy = Spy(gen.net)
    gen.net = spy
    labels = torch.tensor([1, 7, 7])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = gen.generate(labels, sampler="euler", steps=3, guidance=0.0, generator=g())
    assert len(spy.calls) == 3 and all(torch.equal(c, labels) for c in spy.calls)
    spy.calls.clear()
    guided = gen.generate(labels, sampler="euler", steps=3, guidance=2.0, generator=g())
    assert len(spy.calls) == 3
    assert all(torch.equal(c, torch.tensor([1, 7, 7, 10, 10, 10])) for c in spy.calls)
    assert guided.shape == plain.shape == (3, 1, 8, 8)
    assert not torch.allclose(guided, plain)
    assert float(guided.abs().max()) <= 1.0
    # Same seed, same samples; batching changes them only by float rounding.
    assert torch.equal(plain, gen.generate(labels, sampler="euler", steps=3, generator=g()))
    assert torch.allclose(plain, gen.generate(labels, sampler="euler", steps=3, generator=g(), batch_size=2),
                          atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"])
def test_every_core_sampler_runs_both_objectives(sampler):
    for objective in ("ddpm", "flow"):
        out = tiny(objective).generate(torch.tensor([0, 9]), sampler=sampler, steps=2, guidance=1.0,
                                       generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_bad_arguments_give_clear_errors():
    gen = tiny()
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        gen.generate(torch.tensor([0]), sampler="rk4")
    with pytest.raises(ValueError, match=r"labels must be in 0..9, got values in 3..10"):
        gen.generate(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="labels must be in"):
        gen.generate(torch.tensor([-1]))
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        gen.generate(torch.tensor([0]), steps=0)
    with pytest.raises(ValueError, match="guidance must be >= -1"):
        gen.generate(torch.tensor([0]), guidance=-1.5)
    with pytest.raises(ValueError, match="1-D integer"):
        gen.generate(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"expected \(B, 1, 8, 8\)"):
        gen({"image": torch.zeros(2, 1, 16, 16), "label": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="objective type"):
        build_generator({"data": {"image_size": 8}, "model": TINY, "objective": {"type": "gan"}})
    with pytest.raises(ValueError, match="attention_levels has 1 entries"):
        ClassConditionalUNet(8, 1, 10, [8, 16], attention_levels=[True], norm_num_groups=4)
    with pytest.raises(ValueError, match="not divisible"):
        ClassConditionalUNet(12, 1, 10, [8, 16, 16, 16], norm_num_groups=4)
    with pytest.raises(ValueError, match="multiples of norm_num_groups"):
        ClassConditionalUNet(8, 1, 10, [6, 16], norm_num_groups=4)


def test_frechet_distance_matches_the_gaussian_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(20_000, 3, generator=g, dtype=torch.float64) * 2
    b[:, 0] += 1.0
    # N(0, I) vs N(m, 4I): |m|^2 + 3 * (1 + 4 - 2 * 2) = 1 + 3
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_classifier_features_accuracy_and_shift():
    torch.manual_seed(0)
    clf = DigitClassifier(8).eval()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    pred, feats = predict_features(clf, x, batch_size=2)
    assert pred.shape == (5,) and feats.shape == (5, 64) and feats.dtype == torch.float64
    assert accuracy(clf, x, pred) == 1.0
    shifted = _shift(x, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    # Each shifted image is a translation of the original by at most one pixel (the border filled with -1).
    for s, o in zip(shifted, x):
        pad = torch.nn.functional.pad(o, (1, 1, 1, 1), value=-1.0)
        assert any(torch.equal(s, pad[:, i:i + 8, j:j + 8]) for i in range(3) for j in range(3))
    assert torch.equal(balanced_labels(2, 3), torch.tensor([0, 0, 1, 1, 2, 2]))


def test_grid_has_one_row_per_class(tmp_path):
    images = torch.linspace(-1, 1, 6)[:, None, None, None].expand(6, 1, 4, 4)
    img = grid_image(images, rows=3, scale=2, pad=1)
    assert img.shape == (3 * 9 + 1, 2 * 9 + 1) and img.dtype == np.uint8
    assert img[1, 1] == 0 and img[-2, -2] == 255  # first image black (-1), last white (+1)
    path = save_grid(images, 3, tmp_path / "g" / "grid.png")
    assert path.is_file()
    with pytest.raises(ValueError, match=".png"):
        save_grid(images, 3, tmp_path / "grid.jpg")
    with pytest.raises(ValueError, match="rows=4"):
        grid_image(images, rows=4)
