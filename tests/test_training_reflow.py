"""Reflow: coupled training straightens a flow (the toy), and the CLI path builds a student from a teacher run."""

import pytest
import torch

from diffpolicy.training import run as train_run
from diffpolicy.core.objectives import FlowMatching
from diffpolicy.core.samplers import sample
from diffpolicy.data.dataset import WindowDataset
from diffpolicy.policy.factory import load_policy
from diffpolicy.training.reflow import CouplingBatches, make_couplings


def fit(net, objective, batches, steps, lr=3e-3):
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for i in range(steps):
        x0, noise, g = batches(i)
        loss = objective.loss(net, x0, generator=g, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def one_step_error(objective, net, n, g, centers):
    with torch.no_grad():
        x = sample(objective, net, torch.randn(n, 2, generator=g), sampler="euler", steps=1)
    return torch.cdist(x, centers).min(1).values.mean().item()


@pytest.fixture(scope="module")
def flow_teacher(train_config, tmp_path_factory):
    """A 20-step flow-matching run on TwoPath: the teacher of the distillation tests (one per module)."""
    teacher_dir = tmp_path_factory.mktemp("flow_teacher")
    cfg = train_config(teacher_dir, "unet_flow")
    cfg["training"].update(steps=20, eval={"n_episodes": 0})
    train_run.run(cfg)
    return teacher_dir


def test_reflow_makes_one_euler_step_land_on_the_modes(toy_mixture):
    """With independent pairs, one Euler step returns the mean of the 8 modes (near the origin, ~1 from every mode);
    trained on its own noise -> sample couplings, the student's single step lands near a mode."""
    centers, ToyNet, draw = toy_mixture
    torch.manual_seed(0)
    obj, g = FlowMatching(time_sampling="logit_normal"), torch.Generator().manual_seed(0)
    teacher = ToyNet()
    fit(teacher, obj, lambda i: (draw(256, g), None, g), 1500)
    with torch.no_grad():
        z = torch.randn(8192, 2, generator=g)
        x = sample(obj, teacher, z, sampler="euler", steps=32)
    student = ToyNet()
    student.load_state_dict(teacher.state_dict())

    def coupled(i):
        idx = torch.randint(0, len(z), (256,), generator=g)
        return x[idx], z[idx], g

    fit(student, obj, coupled, 1500, lr=1e-3)
    before, after = one_step_error(obj, teacher, 2000, g, centers), one_step_error(obj, student, 2000, g, centers)
    assert before > 0.4 and after < 0.5 * before, (before, after)


def test_reflow_run_starts_from_the_teacher_and_trains_on_its_samples(two_path_dataset, train_config, tmp_path):
    teacher_dir = tmp_path / "teacher"
    train_run.run(train_config(teacher_dir, "unet_flow"))
    teacher, tcfg = load_policy(teacher_dir)

    data = WindowDataset(two_path_dataset, ["state"], horizon=16, n_obs_steps=2, n_action_steps=8)
    c = make_couplings(teacher, data, teacher.sampling_plan("euler", 3), copies=2, batch_size=64, seed=1)
    n = 2 * len(data)
    assert c["action"].shape == (n, 16, 2) and c["noise"].shape == (n, 16, 2) and c["obs"]["state"].shape == (n, 2, 4)
    i = torch.tensor([0, len(data) + 5])  # the same window twice (two copies) gets different noise
    assert torch.equal(c["obs"]["state"][0], c["obs"]["state"][len(data)]) and not torch.equal(*c["noise"][[0, n // 2]])
    with torch.no_grad():
        cond = teacher.encode({"state": c["obs"]["state"][i]})
        again = teacher.sample_chunk(cond, teacher.sampling_plan("euler", 3), noise=c["noise"][i])
    torch.testing.assert_close(teacher.normalizer.unnormalize("action", again), c["action"][i])
    b = CouplingBatches(c, 8, seed=3)(7)
    assert b["noise"].shape == (8, 16, 2) and torch.equal(b["action"], CouplingBatches(c, 8, seed=3)(7)["action"])

    cfg = train_config(tmp_path / "student", "unet_ddpm")  # policy= is replaced by the teacher's
    cfg["reflow"] = {"teacher": str(teacher_dir), "copies": 1, "sampler": "euler", "steps": 2, "shift": 0.5}
    cfg["training"]["steps"] = 10
    train_run.run(cfg)
    student, scfg = load_policy(tmp_path / "student")
    assert scfg["policy"] == tcfg["policy"] and scfg["reflow"]["teacher"] == str(teacher_dir)
    moved = [not torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values())]
    assert any(moved)

    ddpm = train_config(tmp_path / "ddpm", "unet_ddpm")
    ddpm["training"].update(steps=2, eval={"n_episodes": 1, "n_envs": 1, "video_episodes": 0})
    train_run.run(ddpm)
    cfg = train_config(tmp_path / "bad", "unet_flow")
    cfg["reflow"] = {"teacher": str(tmp_path / "ddpm"), "copies": 1}
    with pytest.raises(ValueError, match="reflow needs a flow-matching teacher"):
        train_run.run(cfg)


def test_distill_run_starts_from_the_teacher_and_samples_in_one_step(train_config, flow_teacher, tmp_path):
    """distill.teacher: the student copies the teacher, trains with the consistency-distillation objective (the
    teacher's net fixed inside it, the student's observation encoder frozen), and its config samples with one Euler
    step; the checkpoint loads as a plain flow policy."""
    teacher_dir = flow_teacher
    teacher, tcfg = load_policy(teacher_dir)
    cfg = train_config(tmp_path / "student", "unet_ddpm")  # policy= is replaced by the teacher's
    cfg["distill"] = {"teacher": str(teacher_dir), "grid_steps": 4, "shift": None, "sample_steps": 1,
                      "teacher_steps": 2}
    cfg["training"].update(steps=10, eval={"n_episodes": 2, "n_envs": 2, "video_episodes": 0}, eval_every=0)
    summary = train_run.run(cfg)
    assert summary["n_episodes"] == 2
    student, scfg = load_policy(tmp_path / "student")
    assert (scfg["policy"]["sampler"], scfg["policy"]["steps"]) == ("euler", 1)
    assert {k: v for k, v in scfg["policy"].items() if k not in ("sampler", "steps")} == \
        {k: v for k, v in tcfg["policy"].items() if k not in ("sampler", "steps")}
    moved = [not torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values())]
    assert any(moved)
    cfg["reflow"], cfg["run_dir"] = {"teacher": str(teacher_dir)}, str(tmp_path / "both")
    with pytest.raises(ValueError, match="reflow.teacher and distill.teacher are both set"):
        train_run.run(cfg)


def test_regression_distill_run_trains_the_one_step_map_from_an_init_run(train_config, flow_teacher, tmp_path):
    """distill.method=regression: the teacher's Euler samples are drawn once (couplings) and the student, started
    from distill.init (here the teacher's own run) or the teacher, regresses its one-step map onto them; a wrong
    method or an init of another architecture is a clear error."""
    teacher_dir = flow_teacher
    teacher, tcfg = load_policy(teacher_dir)
    cfg = train_config(tmp_path / "student", "unet_flow")
    cfg["distill"] = {"teacher": str(teacher_dir), "method": "regression", "init": str(teacher_dir),
                      "grid_steps": 3, "copies": 2, "sample_steps": 1, "shifted_copies": 1, "state_noise": 0.05}
    cfg["training"].update(steps=10, eval={"n_episodes": 0}, val_ratio=0.1)
    train_run.run(cfg)
    student, scfg = load_policy(tmp_path / "student")
    assert (scfg["policy"]["sampler"], scfg["policy"]["steps"]) == ("euler", 1)
    moved = [not torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values())]
    assert any(moved)

    other = train_config(tmp_path / "other", "unet_ddpm")
    other["training"].update(steps=2, eval={"n_episodes": 0})
    train_run.run(other)
    bad = {**cfg, "run_dir": str(tmp_path / "bad_init"), "distill": {**cfg["distill"], "init": str(tmp_path / "other")}}
    with pytest.raises(ValueError, match="distill.init .*other is not a policy of the student's architecture"):
        train_run.run(bad)
    bad = {**cfg, "run_dir": str(tmp_path / "bad_method"), "distill": {**cfg["distill"], "method": "magic"}}
    with pytest.raises(ValueError, match="distill.method must be consistency or regression, got 'magic'"):
        train_run.run(bad)


def test_regression_student_of_another_architecture_learns_the_one_step_map(train_config, flow_teacher, tmp_path):
    """distill.student: a regression student may have other networks than its teacher (here a transformer student
    of a U-Net teacher): it starts from fresh weights, its config holds its own architecture, and its one-step
    chunks move towards the teacher's samples; a consistency student or a change of chunk geometry is refused."""
    from diffpolicy.core.objectives import OneStepRegression
    from diffpolicy.nets.transformer1d import TransformerDenoiser

    teacher, tcfg = load_policy(flow_teacher)
    cfg = train_config(tmp_path / "student", "unet_flow")
    overrides = {"name": "transformer_student", "denoiser": "transformer",
                 "transformer": {"d_model": 32, "n_layers": 2, "n_heads": 2, "time_embed_dim": 16, "dropout": 0.0}}
    cfg["distill"] = {"teacher": str(flow_teacher), "method": "regression", "grid_steps": 3, "copies": 2,
                      "sample_steps": 1, "student": overrides}
    cfg["training"].update(steps=60, eval={"n_episodes": 0}, lr=3e-3, warmup_steps=0, checkpoint_every=60)
    train_run.run(cfg)
    student, scfg = load_policy(tmp_path / "student")
    assert isinstance(student.net, TransformerDenoiser) and scfg["policy"]["name"] == "transformer_student"
    assert scfg["policy"]["horizon"] == tcfg["policy"]["horizon"] and scfg["policy"]["unet"] == tcfg["policy"]["unet"]

    # one-step distance to the teacher's samples on fresh pairs: the trained student against a fresh one
    data = WindowDataset(tcfg["task"]["dataset"], ["state"], horizon=16, n_obs_steps=2, n_action_steps=8)
    plan = teacher.sampling_plan("euler", 3)
    pairs = make_couplings(teacher, data, plan, copies=1, seed=123)
    fresh, _ = load_policy(tmp_path / "student")
    torch.manual_seed(0)
    for p in fresh.net.parameters():
        p.data.normal_(0, 0.02)

    def distance(policy):
        obj = OneStepRegression(policy.objective, plan.schedule)
        with torch.no_grad():
            cond = policy.encode(pairs["obs"])
            return obj.loss(policy.net, policy.normalizer.normalize("action", pairs["action"]), cond,
                            noise=pairs["noise"]).item()

    assert distance(student) < 0.5 * distance(fresh)

    bad = {**cfg, "run_dir": str(tmp_path / "bad_cd"), "distill": {**cfg["distill"], "method": "consistency"}}
    with pytest.raises(ValueError, match="distill.student sets the student's networks, which only "
                                         "distill.method=regression allows"):
        train_run.run(bad)
    bad = {**cfg, "run_dir": str(tmp_path / "bad_geometry"),
           "distill": {**cfg["distill"], "student": {"horizon": 8}}}
    with pytest.raises(ValueError, match=r"distill.student may not set \['horizon'\]"):
        train_run.run(bad)


def test_shifted_couplings_label_states_near_the_demonstrations(flow_teacher):
    """state_noise: each window's state is shifted by one Gaussian offset (normalised units, the same for all its
    steps) and the teacher's sample is drawn for the shifted window; without it the windows are the data's."""
    teacher, tcfg = load_policy(flow_teacher)
    data = WindowDataset(tcfg["task"]["dataset"], ["state"], horizon=16, n_obs_steps=2, n_action_steps=8)
    plan = teacher.sampling_plan("euler", 2)
    clean = make_couplings(teacher, data, plan, copies=2, seed=5)
    shifted = make_couplings(teacher, data, plan, copies=2, seed=5, state_noise=0.1)
    norm = teacher.normalizer
    offset = norm.normalize("state", shifted["obs"]["state"]) - norm.normalize("state", clean["obs"]["state"])
    torch.testing.assert_close(offset[:, 1], offset[:, 0], rtol=0, atol=1e-5)  # one offset per window
    assert abs(offset[:, 0].std().item() - 0.1) < 0.01 and abs(offset[:, 0].mean().item()) < 0.01
    # each action is the teacher's sample for the shifted window and the stored noise
    with torch.no_grad():
        again = teacher.sample_chunk(teacher.encode({"state": shifted["obs"]["state"][:64]}), plan,
                                     noise=shifted["noise"][:64])
    torch.testing.assert_close(norm.unnormalize("action", again), shifted["action"][:64], rtol=1e-4, atol=1e-4)


def test_onpolicy_rounds_label_the_students_own_states_and_resume_without_new_rollouts(train_config, flow_teacher,
                                                                                        tmp_path):
    """distill.onpolicy_rounds: after the first fit the student is rolled out, the teacher's samples on the windows
    it planned from join the pairs, and the student trains on; the final student is the run's latest checkpoint, and
    a resumed run reuses the stored pairs (no second rollout) and ends with the same weights."""
    from diffpolicy.training.onpolicy import _load_couplings
    from diffpolicy.policy.checkpoint import load_tensors, resolve_checkpoint

    teacher_dir = flow_teacher
    teacher, _ = load_policy(teacher_dir)
    run_dir = tmp_path / "student"
    cfg = train_config(run_dir, "unet_flow")
    cfg["distill"] = {"teacher": str(teacher_dir), "method": "regression", "grid_steps": 3, "copies": 2,
                      "sample_steps": 1, "onpolicy_rounds": 1, "onpolicy_episodes": 2, "onpolicy_steps": 6}
    cfg["training"].update(steps=8, eval={"n_episodes": 0})
    train_run.run(cfg)
    rows = (run_dir / "onpolicy.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"round": 1' in rows[0]
    assert resolve_checkpoint(run_dir).name == "step_00000014"  # 8 steps, then one round of 6
    final = load_tensors(resolve_checkpoint(run_dir), "ema")
    for k, v in load_tensors(resolve_checkpoint(run_dir / "onpolicy" / "round_1"), "ema").items():
        torch.testing.assert_close(final[k], v, rtol=0, atol=0)

    visited = _load_couplings(run_dir / "onpolicy" / "round_1" / "visited.safetensors")
    assert len(visited["action"]) % 2 == 0 and visited["obs"]["state"].shape[1:] == (2, 4)
    with torch.no_grad():  # each pair is the teacher's 3-step sample from its noise on a visited window
        again = teacher.sample_chunk(teacher.encode({"state": visited["obs"]["state"][:5]}),
                                     teacher.sampling_plan("euler", 3), noise=visited["noise"][:5])
    torch.testing.assert_close(teacher.normalizer.unnormalize("action", again), visited["action"][:5])

    # interrupted in the round: its last checkpoint is removed, resume trains it again from the stored pairs
    import shutil
    shutil.rmtree(run_dir / "checkpoints" / "step_00000014")
    (run_dir / "checkpoints" / "latest").write_text("step_00000008\n")
    round_ckpts = run_dir / "onpolicy" / "round_1" / "checkpoints"
    shutil.rmtree(round_ckpts)
    train_run.run({**cfg, "resume": True}, overrides=[])
    assert len((run_dir / "onpolicy.jsonl").read_text().splitlines()) == 1
    for k, v in load_tensors(resolve_checkpoint(run_dir), "ema").items():
        torch.testing.assert_close(final[k], v)
    # resuming the finished run (its first fit shorter than a round) trains nothing more
    cfg["training"]["steps"], cfg["distill"]["onpolicy_steps"] = 10, 4
    train_run.run({**cfg, "run_dir": str(tmp_path / "short")})
    first_fit = tmp_path / "short" / "checkpoints" / "step_00000010"
    done, fit = load_tensors(resolve_checkpoint(tmp_path / "short"), "ema"), load_tensors(first_fit, "ema")
    train_run.run({**cfg, "run_dir": str(tmp_path / "short"), "resume": True}, overrides=[])
    assert resolve_checkpoint(tmp_path / "short").name == "step_00000014"
    for before, after in ((done, resolve_checkpoint(tmp_path / "short")), (fit, first_fit)):
        for k, v in load_tensors(after, "ema").items():
            torch.testing.assert_close(before[k], v, rtol=0, atol=0)


def test_recording_policy_records_each_window_it_is_asked_to_plan_from(train_config, tmp_path):
    from diffpolicy.eval.rollout import evaluate
    from diffpolicy.training.onpolicy import RecordingPolicy

    cfg = train_config(tmp_path / "run", "unet_flow")
    cfg["training"].update(steps=2, eval={"n_episodes": 0})
    train_run.run(cfg)
    policy, pcfg = load_policy(tmp_path / "run")
    recorder = RecordingPolicy(policy)
    summary = evaluate(recorder, pcfg["task"], n_episodes=2, n_envs=2, progress=False)
    chunks = sum(e["chunks"] for e in summary["episodes"])
    assert sum(len(w["state"]) for w in recorder.windows) == chunks  # one window per planned chunk
    assert recorder.horizon == policy.horizon and recorder.windows[0]["state"].shape[1:] == (2, 4)
    # the first window of an episode repeats its first observation (the history is padded with it)
    torch.testing.assert_close(recorder.windows[0]["state"][:, 0], recorder.windows[0]["state"][:, 1])
