"""Class-conditional image generation on the shared core: a 2D U-Net, an objective, classifier-free guidance.

The network is diffusers' ``UNet2DModel`` with a class embedding (``num_class_embeds = num_classes + 1``): the
extra index ``num_classes`` is the *null label* of classifier-free guidance. diffusers' U-Net is used rather than
one of our own because its 2D blocks (ResNet + GroupNorm + optional attention, embedding added to every block) are
exactly what small image diffusion needs, it is already a dependency, and the core's interface makes the choice
invisible: anything ``net(x, t, cond)`` trains with :meth:`Objective.loss` and samples with
:func:`diffpolicy.core.samplers.sample`. Nothing here re-implements a schedule, loss or sampler.

Training drops each label to the null label with probability ``label_dropout`` (Ho & Salimans 2022), so one
network learns both the conditional and the unconditional model; sampling combines them with the core's guidance
``out = out_c + w (out_c - out_null)`` (``w = 0``: plain conditional).

**Latent space** (Rombach et al. 2022): with an ``autoencoder`` (:mod:`.autoencoder`, config ``latent.autoencoder``)
the same objective and U-Net work on its scaled latents ``(4, 4, 4)`` instead of pixels ``(1, 16, 16)``: training
encodes each batch, sampling decodes the sampled latents. The autoencoder is a frozen submodule (no gradients, always
in eval mode) whose weights are part of the generator's state dict, so a latent checkpoint is self-contained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import UNet2DModel
from torch import nn

from ..core.likelihood import bits_per_dim, dequantize, ode_log_likelihood, quantize, vlb
from ..core.objectives import Objective, make_objective
from ..core.samplers import check_steps, get_sampler, sample
from ..policy.checkpoint import load_config, load_tensors, resolve_checkpoint
from .autoencoder import DigitAutoencoder, build_autoencoder, load_autoencoder
from .classifier import check_same_path


class ClassConditionalUNet(nn.Module):
    """``net(x (B, C, H, W), t (B,), labels (B,) int64) -> (B, C, H, W)``, labels in ``0..num_classes`` (the last
    one is the null label)."""

    def __init__(self, image_size: int, channels: int, num_classes: int, block_out_channels: Sequence[int],
                 layers_per_block: int = 1, attention_levels: Sequence[bool] | None = None, norm_num_groups: int = 8):
        super().__init__()
        levels = len(block_out_channels)
        attention_levels = list(attention_levels) if attention_levels is not None else [False] * levels
        if len(attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(attention_levels)} entries; expected one per level "
                             f"of block_out_channels {list(block_out_channels)}")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1} ({levels} U-Net levels)")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"block_out_channels {list(block_out_channels)} must be multiples of "
                             f"norm_num_groups={norm_num_groups}")
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=channels, out_channels=channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            norm_num_groups=norm_num_groups, attention_head_dim=8, num_class_embeds=num_classes + 1,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=labels).sample


class ImageGenerator(nn.Module):
    """A class-conditional generator: ``forward(batch, generator) -> loss`` for the shared training loop, and
    :meth:`generate` for sampling.

    ``batch`` is ``{"image": (B, C, H, W) in [-1, 1], "label": (B,) int64}``. With an ``autoencoder`` the net
    models its latents ``(B, *autoencoder.latent_shape)``; images in and out stay ``(B, C, H, W)``.
    """

    def __init__(self, objective: Objective, net: ClassConditionalUNet, image_size: int, channels: int = 1,
                 label_dropout: float = 0.1, autoencoder: DigitAutoencoder | None = None):
        super().__init__()
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout {label_dropout} must be in [0, 1)")
        if autoencoder is not None and (autoencoder.image_size, autoencoder.channels) != (image_size, channels):
            raise ValueError(f"the autoencoder takes {autoencoder.channels}-channel {autoencoder.image_size}px "
                             f"images; the generator's data are {channels}-channel {image_size}px")
        self.objective, self.net = objective, net
        self.image_size, self.channels, self.label_dropout = image_size, channels, label_dropout
        self.num_classes = net.num_classes
        self.autoencoder = autoencoder.eval().requires_grad_(False) if autoencoder is not None else None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape of one sample the net models: the latent shape, or ``(C, H, W)`` in pixel space."""
        if self.autoencoder is not None:
            return tuple(self.autoencoder.latent_shape)
        return (self.channels, self.image_size, self.image_size)

    def train(self, mode: bool = True) -> ImageGenerator:
        """As ``nn.Module.train``, but the frozen autoencoder stays in eval mode."""
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``labels`` ``(B,)`` with each entry replaced by the null label with probability ``label_dropout``."""
        if self.label_dropout == 0.0:
            return labels
        u = torch.rand(labels.shape, generator=generator, device=labels.device)
        return torch.where(u < self.label_dropout, torch.full_like(labels, self.null_label), labels)

    def check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None:
        top = self.num_classes if allow_null else self.num_classes - 1
        if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be a 1-D integer tensor (B,), got {tuple(labels.shape)} {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > top):
            raise ValueError(f"labels must be in 0..{top}, got values in {int(labels.min())}..{int(labels.max())}")

    def forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        expected = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"batch['image'] has shape {tuple(images.shape)}; "
                             f"expected (B, {', '.join(map(str, expected))})")
        self.check_labels(labels, allow_null=True)
        if self.autoencoder is not None:
            with torch.no_grad():
                images = self.autoencoder.encode(images)
        return self.objective.loss(self.net, images, self.drop_labels(labels, generator), generator)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 0.0,
                 generator: torch.Generator | None = None, batch_size: int = 500, classifier=None,
                 classifier_scale: float = 0.0, conditional: bool = True, **sampler_kwargs) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] of classes ``labels`` ``(B,)``, ``batch_size`` at a time.

        Initial noise ``(B, *sample_shape)`` and any sampler noise come from ``generator``, so a seed fixes the
        samples. In latent space the sampled latents are decoded (decoding included in each chunk).
        ``classifier`` (a :class:`~diffpolicy.imagegen.classifier.NoisyDigitClassifier` of this objective's path)
        with ``classifier_scale`` adds classifier guidance toward ``labels``, alone or with ``guidance``;
        ``conditional=False`` samples the unconditional model (the null label), so ``labels`` act only through the
        classifier. Extra keywords go to the sampler (e.g. ``corrector=Langevin(...)``).
        """
        get_sampler(sampler), check_steps(steps)  # fail before any work
        if guidance < -1:
            raise ValueError(f"guidance must be >= -1 (-1 = the unconditional model, 0 = the conditional model "
                             f"without guidance), got {guidance}")
        if classifier_scale < 0 or (classifier_scale > 0 and classifier is None):
            raise ValueError(f"classifier_scale={classifier_scale}: expected >= 0, and a classifier when > 0")
        if classifier_scale > 0 and self.autoencoder is not None:
            raise ValueError("classifier guidance needs a classifier of the sampled space; this generator samples "
                             "latents and the noise-conditional classifiers here classify pixels")
        if classifier is not None:
            check_same_path(classifier, self.objective)
        if not conditional and guidance:
            raise ValueError(f"guidance={guidance} (classifier-free) needs the conditional model; conditional=False "
                             f"samples the unconditional one")
        self.check_labels(labels)
        device = next(self.net.parameters()).device
        labels = labels.to(device)
        null = torch.full((1,), self.null_label, dtype=labels.dtype, device=device)
        out = []
        for chunk in labels.split(batch_size):
            noise = torch.randn((len(chunk), *self.sample_shape), generator=generator, device=device)
            grad = classifier.log_prob_grad(chunk) if classifier_scale > 0 else None
            cond = chunk if conditional else torch.full_like(chunk, self.null_label)
            x = sample(self.objective, self.net, noise, cond, sampler=sampler, steps=steps, guidance=guidance,
                       null_cond=null if guidance else None, generator=generator, classifier_grad=grad,
                       classifier_scale=classifier_scale, **sampler_kwargs)
            if self.autoencoder is not None:
                x = self.autoencoder.decode(x)
            out.append(x.clamp(-1, 1))
        return torch.cat(out)

    @torch.no_grad()  # the ODE enables gradients with respect to the images only
    def bits_per_dim(self, images: torch.Tensor, labels: torch.Tensor | None = None, method: str = "ode",
                     steps: int | None = None, trace: str = "hutchinson", probes: int = 1,
                     generator: torch.Generator | None = None, batch_size: int = 500) -> torch.Tensor:
        """Negative log-likelihood of 8-bit ``images`` ``(B, C, H, W)`` in [-1, 1] in bits per dimension ``(B,)``,
        of the class-conditional model (``labels`` ``(B,)``) or the unconditional one (None: the null label).

        ``method="vlb"``: the variational bound with a discretised decoder (on ``objective.likelihood_schedule(
        steps)``: a DDPM's own chain by default); ``method="ode"``: the probability-flow ODE (``steps`` RK4 steps,
        default 32) on uniformly dequantised images, divergence by ``trace`` (:mod:`~diffpolicy.core.likelihood`).
        """
        if self.autoencoder is not None:
            raise ValueError("bits per dimension are of pixels; a latent generator models its autoencoder's latents "
                             "(the decoder's likelihood would be needed too)")
        if method not in ("ode", "vlb"):
            raise ValueError(f"unknown likelihood method {method!r}; expected 'ode' or 'vlb'")
        expected = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images have shape {tuple(images.shape)}; expected (B, {', '.join(map(str, expected))})")
        device = next(self.net.parameters()).device
        if labels is None:
            labels = torch.full((images.shape[0],), self.null_label, dtype=torch.int64)
        self.check_labels(labels, allow_null=True)
        x_all, dims, width = quantize(images.to(device)), images[0].numel(), 2 / 255
        out = []
        for x, c in zip(x_all.split(batch_size), labels.to(device).split(batch_size)):
            denoise = self.objective.denoiser(self.net, c, clip=False)
            if method == "vlb":
                terms = vlb(denoise, x, self.objective.likelihood_schedule(steps), bin_width=width, generator=generator)
                out.append(bits_per_dim(terms.total, dims))
            else:
                log_p = ode_log_likelihood(self.objective, denoise, dequantize(x, width, generator), steps or 32,
                                           trace, probes, generator)
                out.append(bits_per_dim(-log_p, dims, bin_width=width))
        return torch.cat(out)


def build_latent_autoencoder(cfg: Mapping[str, Any]) -> DigitAutoencoder | None:
    """The autoencoder of the config's ``latent`` section, or None (pixel space: no section or
    ``latent.autoencoder`` null).

    ``latent.model`` (an autoencoder model config) builds the architecture without reading any file: its weights
    come with the generator's checkpoint. Otherwise ``latent.autoencoder`` (an autoencoder run or checkpoint) is
    loaded, EMA weights, and its model config and checkpoint path are written **into** ``cfg["latent"]`` as
    ``model`` and ``checkpoint``, so the config a training run saves rebuilds the generator without that run.
    """
    latent = cfg.get("latent") or {}
    if latent.get("model") is not None:
        return build_autoencoder(latent["model"])
    if latent.get("autoencoder") is None:
        return None
    if latent["autoencoder"] == "???":  # the latent configs' mandatory value, left unset
        raise ValueError("latent.autoencoder is required by this config (imagegen=latent_*): set "
                         "latent.autoencoder=<a run of `diffpolicy-imagegen autoencoder`>")
    ae, model_cfg, ckpt = load_autoencoder(latent["autoencoder"])
    if isinstance(cfg["latent"], dict):
        cfg["latent"].update(model=model_cfg, checkpoint=str(ckpt))
    return ae


def build_generator(cfg: Mapping[str, Any]) -> ImageGenerator:
    """From the config's ``data`` (image_size), ``model`` (U-Net and label dropout), ``objective`` and optional
    ``latent`` sections (:func:`build_latent_autoencoder`; in latent space the U-Net is sized for the latents)."""
    data, model = cfg["data"], dict(cfg["model"])
    label_dropout = model.pop("label_dropout", 0.1)
    size = int(data["image_size"])
    autoencoder = build_latent_autoencoder(cfg)
    net_channels, net_size = (1, size) if autoencoder is None else autoencoder.latent_shape[:2]
    try:
        net = ClassConditionalUNet(image_size=net_size, channels=net_channels,
                                   num_classes=int(data.get("num_classes", 10)), **model)
    except ValueError as e:
        if autoencoder is None:
            raise
        raise ValueError(f"model: {e}; in latent space the U-Net runs on {net_size}x{net_size} latents "
                         f"{autoencoder.latent_shape} (see configs/imagegen/latent_flow.yaml: 2 levels)") from e
    return ImageGenerator(make_objective(cfg["objective"]), net, size, 1, label_dropout, autoencoder)


def load_generator(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
                   ) -> tuple[ImageGenerator, dict, Path]:
    """``(generator, config, checkpoint_dir)`` from a checkpoint, a ``checkpoints/`` root or a run directory.

    A latent generator's checkpoint holds its autoencoder's weights and model config: no other file is read."""
    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt)
    missing = [k for k in ("data", "model", "objective") if k not in cfg]
    if missing:
        raise ValueError(f"{ckpt}/config.yaml lacks {missing}: not an image-generator checkpoint")
    gen = build_generator(cfg)
    gen.load_state_dict(load_tensors(ckpt, "ema" if use_ema else "model"))
    return gen.to(device).eval(), cfg, ckpt
