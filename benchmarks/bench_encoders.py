"""Image-encoder training throughput on CPU: our encoders beside Diffusion Policy's own, in one process.

One training step = forward + backward + AdamW step (Diffusion Policy's optimizer settings: lr 1e-4, betas
(0.95, 0.999), weight decay 1e-6) on a float32 batch of ``--batch`` images (default 128), loss = mean square of
the features. Rate = images/s. Repetitions are interleaved (every case runs one repetition of ``--steps`` steps
in turn, the starting case rotating), so load from other jobs hits all cases alike; the table gives the median and
the min-max over ``--reps`` repetitions, the ratio of medians to Diffusion Policy's encoder at the same input, and
the "paired" ratio (median over repetitions of the ratio within a repetition).

Two input sizes (``--groups``):
  a: 64x64 images, 56x56 crop (our recipe): ours ``conv`` (16, 32, 32, 64) / strides (2, 2, 1, 1), ours
     ``resnet18_gn`` width 32 and 64, Diffusion Policy's encoder built for 64x64 with a 56x56 crop;
  b: 96x96 images, 84x84 crop (Diffusion Policy's Push-T image setting): ours ``resnet18_gn`` width 64 and 32,
     ours ``conv`` as in (a), Diffusion Policy's encoder.
Our encoders take the already cropped image (our crop is part of window gathering, ``bench_data.py``). Diffusion
Policy's encoder is timed as its training runs it: its ``ObservationEncoder`` gets the full image (plus the 2-d
``agent_pos``) and crops inside (robomimic's crop randomizer, replaced by DP's ``CropRandomizer`` as with its
``eval_fixed_crop=True``); the row "DP VisualCore" is its image network alone on the cropped image, which is what
our rows measure.

Diffusion Policy's encoder is built by its own ``DiffusionUnetHybridImagePolicy`` (robomimic ``bc_rnn`` image config:
torchvision ResNet-18 conv trunk + SpatialSoftmax(32 keypoints) + Linear to 64, BatchNorm -> GroupNorm(C // 16)
through ``obs_encoder_group_norm=True``) from a checkout given with ``--reference DIR`` (or
``DIFFPOLICY_DP_REFERENCE``); the policy's U-Net is built small and discarded. None of that code is in this
repository. It needs torchvision, robomimic 0.2.0 (DP's pin), einops, diffusers, omegaconf and zarr. Without a
reference only our rows are measured (any environment with the package).

Set-up and run (2-core machine, core 0 busy: one thread on core 1):

    python -m venv /work/exp/dpvenv
    /work/exp/dpvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/exp/dpvenv/bin/pip install --no-deps robomimic==0.2.0
    /work/exp/dpvenv/bin/pip install einops diffusers omegaconf zarr termcolor six tqdm
    /work/exp/dpvenv/bin/pip install --no-deps -e /work/main
    # DP checkout at /tmp/dp_src (git clone, or the files of a bare mirror via git cat-file)
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 \\
        /work/exp/dpvenv/bin/python benchmarks/bench_encoders.py --reference /tmp/dp_src
    # ours only:
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_encoders.py

Results: ``benchmarks/results/encoders.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from diffpolicy.nets.encoders import make_image_encoder

REF_MODULE = "diffusion_policy.policy.diffusion_unet_hybrid_image_policy"
CONV_RECIPE = {"features": 64, "keypoints": 32, "channels": (16, 32, 32, 64), "strides": (2, 2, 1, 1)}
GROUPS = {"a": (64, 56), "b": (96, 84)}  # image side, crop side
ADAMW = {"lr": 1e-4, "betas": (0.95, 0.999), "eps": 1e-8, "weight_decay": 1e-6}


# -- Diffusion Policy's encoder ----------------------------------------------------------------------------------------
def load_reference(path: str | None):
    """DP's ``DiffusionUnetHybridImagePolicy`` class from a checkout at ``path``, or None (with the reason)."""
    if not path:
        return None, "no --reference / DIFFPOLICY_DP_REFERENCE given: measuring our encoders only"
    if not (Path(path) / (REF_MODULE.replace(".", "/") + ".py")).is_file():
        return None, f"{path} has no {REF_MODULE.replace('.', '/')}.py"
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        return importlib.import_module(REF_MODULE).DiffusionUnetHybridImagePolicy, ""
    except ImportError as e:  # torchvision / robomimic / einops / diffusers / omegaconf / zarr missing
        return None, f"importing the reference from {path} failed: {e}"


def make_reference(policy_cls, image: int, crop: int) -> torch.nn.Module:
    """DP's obs encoder for an RGB key ``image`` (3, image, image) + ``agent_pos`` (2,), crop ``crop``, as its
    Push-T image config builds it (``obs_encoder_group_norm=True``, ``eval_fixed_crop=True``)."""
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

    meta = {"obs": {"image": {"shape": [3, image, image], "type": "rgb"},
                    "agent_pos": {"shape": [2], "type": "low_dim"}},
            "action": {"shape": [2]}}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = policy_cls(shape_meta=meta, noise_scheduler=DDPMScheduler(num_train_timesteps=100), horizon=16,
                            n_action_steps=8, n_obs_steps=2, crop_shape=(crop, crop), down_dims=(32, 64, 128),
                            obs_encoder_group_norm=True, eval_fixed_crop=True)
    enc = policy.obs_encoder
    del policy
    norms = [m for m in enc.modules() if isinstance(m, torch.nn.GroupNorm)]
    if not norms or any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules()):
        raise RuntimeError("reference encoder: expected GroupNorm only (obs_encoder_group_norm)")
    return enc


# -- cases --------------------------------------------------------------------------------------------------------------
def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def make_cases(group: str, batch: int, ref_cls, channels_last: bool = False) -> list[dict]:
    """``[{name, net, inputs, is_ref}]`` for one input size; ``inputs`` are made once (seeded). ``channels_last``
    adds our conv recipe with NHWC weights and input (the layout ``place_for_device`` uses on CUDA)."""
    image, crop = GROUPS[group]
    g = torch.Generator().manual_seed(0)
    full = torch.rand(batch, 3, image, image, generator=g)
    cropped = full[:, :, (image - crop) // 2:(image - crop) // 2 + crop, (image - crop) // 2:(image - crop) // 2 + crop]
    cropped = cropped.contiguous()
    pos = torch.rand(batch, 2, generator=g) * 2 - 1
    cases = []
    ours = [("ours conv (16,32,32,64) s(2,2,1,1)", lambda: make_image_encoder("conv", 3, **CONV_RECIPE))]
    widths = (32, 64) if group == "a" else (64, 32)
    ours += [(f"ours resnet18_gn w{w}", lambda w=w: make_image_encoder("resnet18_gn", 3, width=w, features=64,
                                                                         keypoints=32)) for w in widths]
    if group == "b":
        ours = ours[1:] + ours[:1]
    for name, build in ours:
        torch.manual_seed(0)
        cases.append({"name": name, "net": build(), "inputs": (cropped,), "is_ref": False})
    if channels_last:
        torch.manual_seed(0)
        net = make_image_encoder("conv", 3, **CONV_RECIPE).to(memory_format=torch.channels_last)
        cases.append({"name": "ours conv (16,32,32,64) s(2,2,1,1), channels-last", "net": net,
                      "inputs": (cropped.contiguous(memory_format=torch.channels_last),), "is_ref": False})
    if ref_cls is not None:
        enc = make_reference(ref_cls, image, crop)
        core = copy.deepcopy(enc.obs_nets["image"])
        cases.append({"name": f"DP ObservationEncoder (crop {crop} inside)", "net": enc,
                      "inputs": ({"image": full, "agent_pos": pos},), "is_ref": True})
        cases.append({"name": "DP VisualCore only (cropped input)", "net": core, "inputs": (cropped,),
                      "is_ref": False})
    for c in cases:
        c["net"].train()
        c["opt"] = torch.optim.AdamW(c["net"].parameters(), **ADAMW)
        c["rates"] = []
        c["input"] = f"{image}x{image} crop {crop}"
    return cases


def train_step(case: dict) -> None:
    out = case["net"](*case["inputs"])
    loss = out.square().mean()
    loss.backward()
    case["opt"].step()
    case["opt"].zero_grad(set_to_none=True)


def run_group(cases: list[dict], batch: int, reps: int, steps: int, warmup: int) -> None:
    for c in cases:
        for _ in range(warmup):
            train_step(c)
    for r in range(reps):
        for i in range(len(cases)):
            c = cases[(i + r) % len(cases)]
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(c)
            c["rates"].append(steps * batch / (time.perf_counter() - t0))
        print(f"  rep {r + 1}/{reps}: " + ", ".join(f"{c['name'].split(' (')[0]} {c['rates'][-1]:.0f}"
                                                    for c in cases), flush=True)


def table(all_cases: list[list[dict]]) -> str:
    """Ratio = median rate / DP's median rate; "paired" = median over repetitions of the rate / DP's rate in the
    same repetition (each repetition runs every case back to back, so load from other jobs cancels better)."""
    lines = ["| input | encoder | parameters | images/s median | min-max | ratio to DP's encoder | paired ratio |",
             "|---|---|---|---|---|---|---|"]
    for cases in all_cases:
        ref = next((c for c in cases if c["is_ref"]), None)
        ref_med = statistics.median(ref["rates"]) if ref else None
        for c in cases:
            med = statistics.median(c["rates"])
            ratio = f"{med / ref_med:.2f}x" if ref_med else "-"
            paired = (f"{statistics.median(a / b for a, b in zip(c['rates'], ref['rates'])):.2f}x" if ref else "-")
            lines.append(f"| {c['input']} | {c['name']} | {n_params(c['net']) / 1e6:.3f} M | {med:.1f} | "
                         f"{min(c['rates']):.1f}-{max(c['rates']):.1f} | {ratio} | {paired} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default=os.environ.get("DIFFPOLICY_DP_REFERENCE"),
                   help="Diffusion Policy checkout (directory holding diffusion_policy/)")
    p.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="training steps per repetition")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per case first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels-last", action="store_true", help="add our conv recipe in NHWC layout")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref_cls, why = load_reference(args.reference)
    if why:
        print(why)
    versions = f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    if ref_cls is not None:
        import robomimic
        import torchvision
        versions += f", torchvision {torchvision.__version__}, robomimic {robomimic.__version__}"
    print(f"{versions}; batch {args.batch}, {args.reps} reps x {args.steps} steps, float32, train mode")
    all_cases = []
    for group in args.groups:
        cases = make_cases(group, args.batch, ref_cls, args.channels_last)
        print(f"group {group} ({cases[0]['input']}):", flush=True)
        run_group(cases, args.batch, args.reps, args.steps, args.warmup)
        all_cases.append(cases)
    print()
    print(table(all_cases))


if __name__ == "__main__":
    main()
