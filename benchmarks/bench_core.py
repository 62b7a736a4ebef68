"""Speed of the diffusion core on CPU, side by side with the public Diffusion Policy U-Net.

Measures, at the Push-T state set-up (batch 1, horizon 16, action dim 2, global condition 2 x 20 = 40):
one U-Net forward, one full DDIM chunk (1, 4, 8, 10, 16 steps) and the sampler's own overhead; and a training step
(forward + backward + AdamW) at batch 256. Each case runs our code and the reference (Diffusion Policy's
``ConditionalUnet1D`` driven by diffusers' ``DDIMScheduler`` as its policy does) in the same process, alternating
repetitions, so machine load hits both alike; ratios are what to read. Our code runs in both settings side by side:
``plain`` (the ``nn.Conv1d`` U-Net of ``diffpolicy.nets``) and ``accel`` (the same weights after
``diffpolicy.accel.accelerate``). Before timing, the reference weights are converted into our layout and the networks
are compared on a forward and a full DDIM-10 chunk. The process opts in to ``diffpolicy.accel.tune_process`` as the
CLIs do (``--no-tune``: not).

The reference is never part of this repository: fetch it as described in ``benchmarks/reference_unet.md`` and pass
its directory with ``--reference DIR`` or ``DIFFPOLICY_DP_REFERENCE=DIR``; without it only our rows are measured.

    python benchmarks/bench_core.py --reference /tmp/dpref --compile

On a quiet machine keep OpenMP's default wait policy: ``OMP_WAIT_POLICY=PASSIVE`` (for a machine shared with other
jobs, where spinning threads fight them) wakes a sleeping thread at every parallel op, which at batch 1 doubled the
small-width forward on 2 threads on both sides (ours 8.7 vs 4.0 ms, the reference 12.0 vs 6.1 ms; runs J and L).
Results and their exact commands: ``benchmarks/results/core.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from tqdm import tqdm

import diffpolicy
from diffpolicy.accel import accelerate, compile_trunk, conv1d, tune_process
from diffpolicy.core.objectives import DDPM
from diffpolicy.core.samplers import ddim
from diffpolicy.nets.unet1d import ConditionalUnet1D, FiLMResBlock
from diffpolicy.policy.sampling import TimeTable

WIDTHS = {"small": (64, 128, 256), "large": (256, 512, 1024)}
HORIZON, ACTION_DIM, COND_DIM = 16, 2, 40
KERNEL, GROUPS, TIME_DIM = 5, 8, 256
REF_MODULE = "diffusion_policy.model.diffusion.conditional_unet1d"


# -- the reference ---------------------------------------------------------------------------------------------------
def load_reference(path: str | None):
    """Diffusion Policy's ``ConditionalUnet1D`` class from a checkout at ``path``, or None (with the reason)."""
    if not path:
        return None, "no --reference / DIFFPOLICY_DP_REFERENCE given"
    if not (Path(path) / (REF_MODULE.replace(".", "/") + ".py")).is_file():
        return None, f"{path} has no {REF_MODULE.replace('.', '/')}.py (see benchmarks/reference_unet.md)"
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        return importlib.import_module(REF_MODULE).ConditionalUnet1D, ""
    except ImportError as e:  # e.g. einops missing
        return None, f"importing the reference from {path} failed: {e}"


def make_reference(ref_cls, widths):
    return ref_cls(input_dim=ACTION_DIM, global_cond_dim=COND_DIM, diffusion_step_embed_dim=TIME_DIM,
                   down_dims=list(widths), kernel_size=KERNEL, n_groups=GROUPS, cond_predict_scale=True)


def make_ours(widths, accel: bool = False, channels_last=None):
    net = ConditionalUnet1D(ACTION_DIM, COND_DIM, 0, widths, KERNEL, GROUPS, TIME_DIM)
    return accelerate(net, channels_last) if accel else net


def accelerated_copy(net: ConditionalUnet1D, widths) -> ConditionalUnet1D:
    """The same weights in an accelerated net."""
    fast = make_ours(widths, accel=True)
    fast.load_state_dict(net.state_dict())
    return fast.train(net.training)


def convert_reference_state(ref_state: dict, ours: ConditionalUnet1D) -> dict:
    """Diffusion Policy U-Net weights -> our state dict (same architecture, different module layout).

    Blocks map by position (``down_modules.i.j`` -> ``down.i.j`` etc.); our fused FiLM ``Linear`` is the row-wise
    concatenation of the reference blocks' ``cond_encoder`` Linears in our block order (both take the input
    ``[time_embedding, global_cond]``, and both lay each block's output out as ``[scale, bias]``).
    """
    src = dict(ref_state)
    out = {}

    def take(dst: str, key: str):
        if key not in src:
            raise KeyError(f"reference state dict has no {key!r} (needed for our {dst!r}); is it the DP U-Net "
                           f"with cond_predict_scale=True?")
        out[dst] = src.pop(key)

    for i in (1, 3):
        for p in ("weight", "bias"):
            take(f"time_embed.{i}.{p}", f"diffusion_step_encoder.{i}.{p}")
    prefix = {"down": "down_modules", "mid": "mid_modules", "up": "up_modules"}
    film_w, film_b = [], []
    for name, block in ours.named_modules():
        if not isinstance(block, FiLMResBlock):
            continue
        head, rest = name.split(".", 1)
        ref = f"{prefix[head]}.{rest}"
        for ours_conv, ref_conv in (("conv1", "blocks.0"), ("conv2", "blocks.1")):
            for j in (0, 1):  # Conv1d, GroupNorm
                for p in ("weight", "bias"):
                    take(f"{name}.{ours_conv}.{j}.{p}", f"{ref}.{ref_conv}.block.{j}.{p}")
        if isinstance(block.skip, torch.nn.Conv1d):
            for p in ("weight", "bias"):
                take(f"{name}.skip.{p}", f"{ref}.residual_conv.{p}")
        film_w.append(src.pop(f"{ref}.cond_encoder.1.weight"))
        film_b.append(src.pop(f"{ref}.cond_encoder.1.bias"))
    for level in range(len(ours.down) - 1):
        for p in ("weight", "bias"):
            take(f"down.{level}.2.{p}", f"down_modules.{level}.2.conv.{p}")
    for level in range(len(ours.up)):
        for p in ("weight", "bias"):
            take(f"up.{level}.2.{p}", f"up_modules.{level}.2.conv.{p}")
    for p in ("weight", "bias"):
        for j in (0, 1):
            take(f"final.0.{j}.{p}", f"final_conv.0.block.{j}.{p}")
        take(f"final.1.{p}", f"final_conv.1.{p}")
    out["film.weight"], out["film.bias"] = torch.cat(film_w), torch.cat(film_b)
    if src:
        raise KeyError(f"reference weights left unmapped: {sorted(src)[:8]}")
    return out


def reference_scheduler(steps: int, clip: bool = True):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=clip,
                          set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")
    sched.set_timesteps(steps)
    return sched


def reference_chunk(model, sched, steps: int, cond: torch.Tensor, generator=None, **step_kwargs) -> torch.Tensor:
    """Diffusion Policy's ``conditional_sample`` loop (its masks are empty with a global condition)."""
    x = torch.randn((cond.shape[0], HORIZON, ACTION_DIM), generator=generator)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        out = model(x, t, local_cond=None, global_cond=cond)
        x = sched.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


def our_chunk(net, obj: DDPM, schedule, cond: torch.Tensor, generator=None, table=None) -> torch.Tensor:
    """Our sampling path as the policy runs it (``DiffusionPolicy.sample_chunk``): condition part of FiLM once, the
    time parts of the grid in one batched call (or ``table``, as the controller caches it), then DDIM."""
    x = torch.randn((cond.shape[0], HORIZON, ACTION_DIM), generator=generator)
    table = table or TimeTable(net, schedule.model_time[:-1])
    return ddim(obj.denoiser(net.conditioned(cond, time_film=table)), x, schedule)


# -- equivalence -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def check_equivalence(ref_cls, widths, seed: int = 0) -> dict[str, float]:
    """Max abs differences with the same weights in the networks: forward at 4 timesteps and on a batch of 256
    (plain and accelerated), and DDIM-10 chunks.

    Chunks compare three ways: the set-up as given (x0 clipped to [-1, 1], the raw network noise kept:
    diffusers' DDIM default, matched by our ``clip_keeps_noise=True``); diffusers with
    ``use_clipped_model_output=True``, which re-derives the noise from the clipped x0 as our default does; and both
    without clipping.
    """
    torch.manual_seed(seed)
    ref = make_reference(ref_cls, widths).eval()
    ours = make_ours(widths).eval()
    ours.load_state_dict(convert_reference_state(ref.state_dict(), ours))
    fast = accelerated_copy(ours, widths)
    x, cond = torch.randn(4, HORIZON, ACTION_DIM), torch.randn(4, COND_DIM)
    t = torch.tensor([0, 17, 63, 99])
    r = ref(x, t, global_cond=cond)
    out = {"forward": (r - ours(x, t.float(), cond)).abs().max().item(),
           "forward accel": (r - fast(x, t.float(), cond)).abs().max().item()}
    # a training batch: large inputs take other convolution paths (Winograd in float32) in the accelerated net
    xb, cb, tb = torch.randn(256, HORIZON, ACTION_DIM), torch.randn(256, COND_DIM), torch.randint(0, 100, (256,))
    ref_b = ref(xb, tb, global_cond=cb)
    out["forward, batch 256"] = (ref_b - ours(xb, tb.float(), cb)).abs().max().item()
    out["forward accel, batch 256"] = (ref_b - fast(xb, tb.float(), cb)).abs().max().item()
    out["forward, batch 256 scale"] = out["forward accel, batch 256 scale"] = ref_b.abs().max().item()
    for name, clip, kwargs in [("chunk", True, {}), ("chunk, clipped eps", True, {"use_clipped_model_output": True}),
                               ("chunk, no clip", False, {})]:
        obj = DDPM(100, "squaredcos_cap_v2", clip_x0=1.0 if clip else None, clip_keeps_noise=not kwargs)
        gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731 - same initial noise for both
        a = reference_chunk(ref, reference_scheduler(10, clip), 10, cond, gen(), **kwargs)
        b = our_chunk(fast, obj, obj.sampling_schedule(10, "leading"), cond, gen())
        out[name] = (a - b).abs().max().item()
        out[name + " scale"] = a.abs().max().item()
    return out


@torch.inference_mode()
def compiled_check(fast, compiled, cond, steps_list) -> str:
    """Compile (timed) and compare compiled and eager DDIM chunks from the same noise."""
    obj = DDPM(100, "squaredcos_cap_v2", clip_x0=1.0)
    t0, diffs = time.perf_counter(), []
    for n in steps_list:
        sched = obj.sampling_schedule(n, "leading")
        runs = [our_chunk(net, obj, sched, cond, torch.Generator().manual_seed(n)) for net in (compiled, fast)]
        diffs.append((runs[0] - runs[1]).abs().max().item())
    return (f"torch.compile of the trunk: first chunks took {time.perf_counter() - t0:.1f} s (compilation); "
            f"max |compiled - eager| chunk difference {max(diffs):.2e}")


# -- timing ----------------------------------------------------------------------------------------------------------
def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def interleaved(cases: dict, reps: int, warmup: int, desc: str) -> tuple[dict, dict]:
    """Wall-clock and process-CPU seconds per call of each case, alternating cases (and their order) every
    repetition. CPU time is less disturbed by other processes on the machine than wall time."""
    names = list(cases)
    for _ in range(warmup):
        for n in names:
            cases[n]()
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in tqdm(range(reps), desc=desc, leave=False):
        for n in names if r % 2 == 0 else reversed(names):
            t0, c0 = time.perf_counter(), time.process_time()
            cases[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
    return wall, cpu


def with_threads(fn, n: int, restore: int):
    """``fn`` run with ``n`` intra-op threads (as the controller sets them), the process setting restored after."""
    def run():
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(restore)
    return run


def pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))]


def row(name: str, v: list[float], base: list[float] | None, c: list[float], cbase: list[float] | None) -> str:
    """Markdown cells: wall p50, p90, min, CPU p50 (ms) and the p50 / min / CPU ratios to ``base``."""
    r = lambda f, a, b: f"{f(a) / f(b):.2f}" if b else ""  # noqa: E731
    med = lambda v: pct(v, 0.5)  # noqa: E731
    return (f"| {name} | {med(v) * 1e3:.2f} | {pct(v, 0.9) * 1e3:.2f} | {min(v) * 1e3:.2f} | {med(c) * 1e3:.2f} "
            f"| {r(med, v, base)} | {r(min, v, base)} | {r(med, c, cbase)} |")


HEADER = ["| {} | p50 ms | p90 ms | min ms | CPU p50 ms | p50 / ref | min / ref | CPU p50 / ref |",
          "|---|---|---|---|---|---|---|---|"]


# -- cases -----------------------------------------------------------------------------------------------------------
def sampling_cases(ref, nets: dict, steps_list, cond):
    """Forward, per-step and chunk callables at batch 1, keyed ``(kind, steps, who)``. ``nets``: ``{who: net}``,
    e.g. ``"ours plain"`` (the policy's path with the plain net: FiLM time table computed in each chunk) and
    ``"ours accel"`` (the controller's: accelerated net, table cached per plan), ``"ours compiled"``."""
    obj = DDPM(100, "squaredcos_cap_v2", clip_x0=1.0)
    x, t = torch.randn(1, HORIZON, ACTION_DIM), torch.tensor([50.0])
    cases = {}
    for who, net in nets.items():
        cases[("forward", 1, who)] = lambda net=net: net(x, t, cond)
        step = net.conditioned(cond, time_film=TimeTable(net, t))
        cases[("step", 1, who)] = lambda step=step: step(x, t)
    if ref is not None:
        t_ref = torch.tensor(50)
        cases[("forward", 1, "reference")] = lambda: ref(x, t_ref, global_cond=cond)
    null = lambda x, t, c=None, **kw: torch.zeros_like(x)  # noqa: E731 - a free network: what is left is the sampler
    for n in steps_list:
        sched = obj.sampling_schedule(n, "leading")
        for who, net in nets.items():
            table = None if who == "ours plain" else TimeTable(net, sched.model_time[:-1])  # cached, as a plan's
            cases[("chunk", n, who)] = lambda s=sched, net=net, tt=table: our_chunk(net, obj, s, cond, table=tt)
        cases[("sampler only", n, "ours plain")] = lambda s=sched: ddim(obj.denoiser(null),
                                                                        torch.randn(1, HORIZON, ACTION_DIM), s)
        if ref is not None:
            rs = reference_scheduler(n)
            cases[("chunk", n, "reference")] = lambda n=n, rs=rs: reference_chunk(ref, rs, n, cond)
            cases[("sampler only", n, "reference")] = lambda n=n, rs=rs: reference_chunk(null, rs, n, cond)
    return cases


def reference_train_step(model, opt, noise_sched, x0, cond):
    """Diffusion Policy's ``compute_loss`` (epsilon target, its all-true loss mask left out) + AdamW step."""
    noise = torch.randn(x0.shape)
    k = torch.randint(0, 100, (x0.shape[0],)).long()
    pred = model(noise_sched.add_noise(x0, noise, k), k, local_cond=None, global_cond=cond)
    loss = F.mse_loss(pred, noise)
    loss.backward()
    opt.step()
    opt.zero_grad()


def our_train_step(net, opt, obj, x0, cond, bf16=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = obj.loss(net, x0, cond)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def training_cases(ref_cls, widths, variants, batch):
    """Training-step callables, each with its own copy of the same initial weights."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    x0, cond = torch.rand(batch, HORIZON, ACTION_DIM) * 2 - 1, torch.randn(batch, COND_DIM)
    obj = DDPM(100, "squaredcos_cap_v2", clip_x0=1.0)
    adamw = dict(lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)  # Diffusion Policy's optimizer
    cases = {}
    init = make_ours(widths).state_dict()
    if ref_cls is not None:
        ref = make_reference(ref_cls, widths)
        init = convert_reference_state(ref.state_dict(), make_ours(widths))
        ref_opt = torch.optim.AdamW(ref.parameters(), **adamw)
        noise_sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
        cases["reference"] = lambda: reference_train_step(ref, ref_opt, noise_sched, x0, cond)
    for v in variants:
        net = make_ours(widths, accel="accel" in v, channels_last=False if "plain-layout" in v else None)
        net.load_state_dict(init)
        opt = torch.optim.AdamW(net.parameters(), fused="fused" in v, **adamw)
        step = (lambda m=net, o=opt, bf=("bf16" in v): our_train_step(m, o, obj, x0, cond, bf))
        cases[f"ours {v}"] = ablated(step, v)
    return cases


def ablated(step, variant: str):
    """``step`` with training kernels of the accelerated net switched off as the variant's words ask, for an A/B in
    one process: ``no-taps`` (oneDNN's weight gradients instead of ``TapWeightGradConv1d``), ``no-winograd`` (no
    ``WinogradConv1d``)."""
    switches = []
    if "no-taps" in variant:
        switches.append(mock.patch.object(conv1d, "tap_weight_grad_pays", lambda *shape: False))
    if "no-winograd" in variant:
        switches.append(mock.patch.object(conv1d, "winograd_pays", lambda *shape: False))

    def run():
        with contextlib.ExitStack() as stack:
            for switch in switches:
                stack.enter_context(switch)
            step()
    return run


@torch.no_grad()
def bf16_error(widths, batch) -> dict[str, float]:
    """Loss and gradient of one batch in fp32 vs under bf16 autocast (same weights, same noise)."""
    torch.manual_seed(0)
    net, obj = make_ours(widths), DDPM(100, "squaredcos_cap_v2")
    x0, cond = torch.rand(batch, HORIZON, ACTION_DIM) * 2 - 1, torch.randn(batch, COND_DIM)
    out = {}
    for bf in (False, True):
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
            net.zero_grad()
            loss = obj.loss(net, x0, cond, generator=torch.Generator().manual_seed(1))
            loss.backward()
        out[bf] = (loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()]))
    g32, g16 = out[False][1].double(), out[True][1].double()
    return {"loss_fp32": out[False][0], "loss_bf16": out[True][0],
            "grad_rel_err": ((g16 - g32).norm() / g32.norm()).item(),
            "grad_cos": F.cosine_similarity(g16, g32, dim=0).item()}


# -- report ----------------------------------------------------------------------------------------------------------
def sampling_report(times, cpu, steps_list, who) -> list[str]:
    med = lambda k: pct(times[k], 0.5)  # noqa: E731
    lines = [HEADER[0].format("case"), HEADER[1]]
    for kind, steps in [("forward", 1), ("step", 1)] + [("chunk", n) for n in steps_list]:
        bkey = (kind if kind != "step" else "forward", steps, "reference")
        for w in who:
            k = (kind, steps, w)
            if k in times:
                label = {"forward": "forward", "step": "per-step net call in a chunk"}.get(kind, f"DDIM-{steps} chunk")
                has = w != "reference" and bkey in times
                lines.append(row(f"{label}, {w}", times[k], times[bkey] if has else None, cpu[k],
                                 cpu[bkey] if has else None))
    lines += ["", "Sampler overhead (chunk - steps x per-step net time; and a chunk with a free network):", "",
              "| steps | who | p50: chunk - steps x step, ms (% of chunk) | same with min times | "
              "sampler alone p50 ms (% of chunk p50) |", "|---|---|---|---|---|"]
    for n in steps_list:
        for w in who:
            if ("chunk", n, w) not in times:
                continue
            step_key = ("forward", 1, "reference") if w == "reference" else ("step", 1, w)
            if step_key not in times:
                continue
            chunk, diff = med(("chunk", n, w)), med(("chunk", n, w)) - n * med(step_key)
            cmin = min(times[("chunk", n, w)])
            dmin = cmin - n * min(times[step_key])
            alone = times.get(("sampler only", n, w))
            alone_s = f"{pct(alone, 0.5) * 1e3:.3f} ({100 * pct(alone, 0.5) / chunk:.1f}%)" if alone else ""
            lines.append(f"| {n} | {w} | {diff * 1e3:.2f} ({100 * diff / chunk:.1f}%) | {dmin * 1e3:.2f} "
                         f"({100 * dmin / cmin:.1f}%) | {alone_s} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default=os.environ.get("DIFFPOLICY_DP_REFERENCE"),
                   help="directory holding diffusion_policy/model/diffusion/*.py (see benchmarks/reference_unet.md)")
    p.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=list(WIDTHS))
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 8, 10, 16])
    p.add_argument("--reps", type=int, default=30, help="repetitions per sampling case")
    p.add_argument("--train-reps", type=int, default=5)
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--train-variants", nargs="*", default=["plain fused-adamw", "accel fused-adamw"],
                   help="our training variants, each a label with optional words accel (the accelerated net; else "
                        "the plain one), fused-adamw, bf16, and for accel: plain-layout (the (B, C, T) trunk instead "
                        "of channels-last), no-taps (oneDNN's weight gradients), no-winograd (no Winograd)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true",
                   help="also time chunks through the controller's torch.compile'd U-Net trunk (compiles first)")
    p.add_argument("--our-threads", type=int, default=None,
                   help="intra-op threads for our batch-1 cases (the controller's num_threads, default 1 there); "
                        "the reference keeps --threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tune", action="store_true", help="leave MKL's mode and glibc's allocator as they are")
    a = p.parse_args(argv)
    tuned = {} if a.no_tune else tune_process()  # before any tensor work, as the CLIs do
    torch.set_num_threads(a.threads)
    ref_cls, why = load_reference(a.reference)
    # sys.path[0] is benchmarks/, so this is the *installed* diffpolicy unless PYTHONPATH says otherwise
    print(f"# bench_core: diffpolicy from {Path(diffpolicy.__file__).parent}")
    print(f"# bench_core: torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f" ({a.our_threads} for our batch-1 cases)" if a.our_threads else "")
          + f", MKL_CBWR={os.environ.get('MKL_CBWR')}, glibc thresholds set: {tuned.get('allocator', False)}"
          + f", loadavg at start {load()}")
    if ref_cls is None:
        print(f"reference rows skipped: {why}")
    for wname in a.widths:
        widths = WIDTHS[wname]
        print(f"\n## down_dims {widths}\n")
        if ref_cls is not None:
            eq = check_equivalence(ref_cls, widths, a.seed)
            print("same weights, max |ours - reference| (max |reference| in brackets): "
                  + ", ".join(f"{k} {v:.2e} ({eq[k + ' scale']:.2f})" if k + " scale" in eq else f"{k} {v:.2e}"
                              for k, v in eq.items() if not k.endswith("scale")) + "\n")
        torch.manual_seed(a.seed)
        plain = make_ours(widths).eval()
        ref = None
        if ref_cls is not None:
            ref = make_reference(ref_cls, widths).eval()
            plain.load_state_dict(convert_reference_state(ref.state_dict(), plain))
        nets = {"ours plain": plain, "ours accel": accelerated_copy(plain, widths)}
        cond = torch.randn(1, COND_DIM)
        if a.compile:
            nets["ours compiled"] = compile_trunk(accelerated_copy(plain, widths))
            print(compiled_check(nets["ours accel"], nets["ours compiled"], cond, a.steps) + "\n")
        cases = sampling_cases(ref, nets, a.steps, cond)
        if a.our_threads:
            cases = {k: (with_threads(f, a.our_threads, a.threads) if k[2] != "reference" else f)
                     for k, f in cases.items()}
        with torch.inference_mode():  # ours; the reference's own policy runs under no_grad, same cost on CPU
            load0 = load()
            times, cpu = interleaved(cases, a.reps, warmup=2, desc=f"sampling {wname}")
        who = ["reference", *nets]
        print(f"sampling, batch 1 (loadavg {load0} -> {load()}, {a.reps} reps, interleaved)\n")
        print("\n".join(sampling_report(times, cpu, a.steps, who)))
        if a.train_reps <= 0:
            continue
        cases = training_cases(ref_cls, widths, a.train_variants, a.train_batch)
        load0 = load()
        times, cpu = interleaved(cases, a.train_reps, warmup=1, desc=f"training {wname}")
        print(f"\ntraining step, batch {a.train_batch} (loadavg {load0} -> {load()}, {a.train_reps} reps, "
              f"interleaved, after 1 warm-up step each)\n")
        print(HEADER[0].format("variant") + " samples/s (p50) | speed-up vs ref (p50; CPU p50) |")
        print(HEADER[1] + "---|---|")
        base, cbase = times.get("reference"), cpu.get("reference")
        for name, v in times.items():
            ours = name != "reference" and base is not None
            up = (f"{pct(base, 0.5) / pct(v, 0.5):.2f}x; {pct(cbase, 0.5) / pct(cpu[name], 0.5):.2f}x" if ours else "")
            print(row(name, v, base if ours else None, cpu[name], cbase if ours else None)
                  + f" {a.train_batch / pct(v, 0.5):.0f} | {up} |")
        if any("bf16" in v for v in a.train_variants):
            e = bf16_error(widths, a.train_batch)
            print(f"\nbf16 autocast vs fp32, one batch: loss {e['loss_fp32']:.5f} vs {e['loss_bf16']:.5f}, gradient "
                  f"relative error {e['grad_rel_err']:.3f}, cosine {e['grad_cos']:.4f}")
    print(f"\nloadavg at end {load()}")


if __name__ == "__main__":
    main()
