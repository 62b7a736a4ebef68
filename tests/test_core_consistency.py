"""Consistency distillation and one-step regression with the exact flow of a finite data set as the teacher."""

import pytest
import torch

from diffpolicy.core.objectives import ConsistencyDistillation, FlowMatching, OneStepRegression
from diffpolicy.core.samplers import euler

POINTS = torch.tensor([[-0.8, -0.6], [0.9, 0.2], [0.0, 0.9]])


class ExactFlow(torch.nn.Module):
    """The exact velocity of flow matching on equally likely ``points``: ``v = (x - E[x0 | x]) / t``."""

    def __init__(self, points):
        super().__init__()
        self.points = points

    def forward(self, x, model_time, cond=None):
        t = (model_time / 1000.0)[:, None]
        d2 = (x[:, None, :] - (1 - t[:, :, None]) * self.points[None]).pow(2).sum(-1)
        x0 = torch.softmax(-d2 / (2 * t**2), dim=1) @ self.points
        return (x - x0) / t


class Student(torch.nn.Module):
    def __init__(self, width=128):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Mish(), torch.nn.Linear(width, width),
                                       torch.nn.Mish(), torch.nn.Linear(width, width), torch.nn.Mish(),
                                       torch.nn.Linear(width, 2))

    def forward(self, x, model_time, cond=None):
        return self.mlp(torch.cat([x, model_time[:, None] / 1000.0], dim=-1))


def distance_to_data(x):
    return torch.cdist(x, POINTS).min(1).values


def one_step_against_teacher(objective, student, flow, teacher):
    """On 2000 fresh noises: mean distance to the data of the student's one step and of the teacher's one step, and
    the fraction of noises the student's one step sends to the data point the teacher's 32 steps reach."""
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        one_step = euler(objective.denoiser(student), noise, objective.sampling_schedule(1))
        teacher_one = euler(flow.denoiser(teacher), noise, flow.sampling_schedule(1))
        teacher_many = euler(flow.denoiser(teacher), noise, flow.sampling_schedule(32))
    same = (torch.cdist(one_step, POINTS).argmin(1) == torch.cdist(teacher_many, POINTS).argmin(1)).float().mean()
    return distance_to_data(one_step).mean(), distance_to_data(teacher_one).mean(), same


def test_the_exact_consistency_function_has_zero_loss_and_an_inconsistent_one_does_not():
    flow = FlowMatching(sampling_shift=0.5)
    x0 = POINTS[:1].expand(64, 2)
    one_point = ExactFlow(POINTS[:1])  # for one data point E[x0 | x] is that point: constant along every path
    cd = ConsistencyDistillation(flow, one_point, flow.sampling_schedule(8))
    g = torch.Generator().manual_seed(0)
    assert cd.loss(one_point, x0, generator=g) < 1e-10
    three = ExactFlow(POINTS)  # the posterior mean moves along the ODE: not a consistency function
    cd = ConsistencyDistillation(flow, three, flow.sampling_schedule(8))
    assert cd.loss(three, POINTS[torch.arange(64) % 3], generator=g) > 1e-3


@pytest.mark.parametrize("teacher_steps", [1, 16])
def test_distilled_student_samples_the_data_in_one_step_where_the_teacher_cannot(teacher_steps):
    """One Euler step of the exact teacher lands at the data mean; the distilled student's one step lands on the
    data points (the teacher needs many steps for that), with one-step (bootstrapped) or whole-ODE targets."""
    torch.manual_seed(0)
    flow, teacher, student = FlowMatching(sampling_shift=0.5), ExactFlow(POINTS), Student()
    cd = ConsistencyDistillation(flow, teacher, flow.sampling_schedule(16), teacher_steps=teacher_steps)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(800):
        x0 = POINTS[torch.randint(0, 3, (256,), generator=g)]
        loss = cd.loss(student, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    student_err, teacher_err, same_point = one_step_against_teacher(cd, student, flow, teacher)
    # measured: student 0.22 (0.17 after 1500 steps), teacher 0.73; the student keeps improving with training
    assert teacher_err > 0.6 and student_err < 0.3, (student_err, teacher_err)
    # the student's one step sends each noise to the data point the teacher's 32 steps reach (measured: 0.99)
    assert same_point > 0.95, same_point


@pytest.mark.parametrize("teacher_steps", [2, 8, 50])
def test_multistep_targets_are_the_teachers_euler_steps_then_the_students_estimate(teacher_steps):
    """Per sample, the target of ``teacher_steps = k`` is the teacher's Euler solve over grid steps n .. min(n + k,
    N) (core.samplers.euler on that slice of the grid), then the student's x0 estimate there unless at the data."""
    flow, teacher, student = FlowMatching(sampling_shift=0.5), ExactFlow(POINTS), Student()
    grid = flow.sampling_schedule(8)
    cd = ConsistencyDistillation(flow, teacher, grid, teacher_steps=teacher_steps)
    x0 = POINTS[torch.arange(40) % 3]
    with torch.no_grad():
        loss = cd.loss(student, x0, generator=torch.Generator().manual_seed(3), reduce=False)
    g = torch.Generator().manual_seed(3)  # the loss's own draws, in its order
    n = torch.randint(0, 8, (40,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    expected = []
    for i in range(40):
        a, m = int(n[i]), min(int(n[i]) + teacher_steps, 8)
        x = grid.alpha[a] * x0[i : i + 1] + grid.sigma[a] * noise[i : i + 1]
        piece = type(grid)(grid.alpha[a : m + 1], grid.sigma[a : m + 1], grid.model_time[a : m + 1])
        with torch.no_grad():
            target = euler(flow.denoiser(teacher, clip=False), x, piece)
            if m < 8:
                target = flow.denoiser(student, clip=False)(target, grid.model_time[m : m + 1], grid.alpha[m],
                                                            grid.sigma[m])[0]
            pred = flow.denoiser(student, clip=False)(x, grid.model_time[a : a + 1], grid.alpha[a], grid.sigma[a])[0]
        expected.append((pred - target).pow(2).mean())
    torch.testing.assert_close(loss, torch.stack(expected), rtol=1e-4, atol=1e-7)


def test_teacher_steps_must_be_a_positive_integer():
    flow = FlowMatching()
    with pytest.raises(ValueError, match="teacher_steps must be an integer >= 1, got 0"):
        ConsistencyDistillation(flow, ExactFlow(POINTS), flow.sampling_schedule(4), teacher_steps=0)


def test_a_teacher_grid_must_have_a_step():
    flow = FlowMatching()
    empty = flow.sampling_schedule(1)
    empty = type(empty)(empty.alpha[:1], empty.sigma[:1], empty.model_time[:1])
    with pytest.raises(ValueError, match="at least one step"):
        ConsistencyDistillation(flow, ExactFlow(POINTS), empty)


def test_one_step_regression_loss_is_the_distance_of_one_euler_step_from_the_coupled_sample():
    flow, student = FlowMatching(sampling_shift=0.5), Student()
    reg = OneStepRegression(flow, flow.sampling_schedule(8))
    g = torch.Generator().manual_seed(4)
    noise, x0 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    with torch.no_grad():
        loss = reg.loss(student, x0, noise=noise, reduce=False)
        one_step = euler(flow.denoiser(student), noise, flow.sampling_schedule(1))
    torch.testing.assert_close(loss, (one_step - x0).pow(2).mean(1))
    with pytest.raises(ValueError, match="coupled .noise, teacher sample. pairs: pass noise"):
        reg.loss(student, x0)


def test_one_step_regression_onto_the_teachers_samples_lands_where_the_teacher_does():
    """Trained on (noise, 32-step teacher sample) pairs drawn once, the student's one step sends fresh noise to the
    data point the teacher's 32 steps reach; the teacher's own one step lands between the points."""
    torch.manual_seed(0)
    flow, teacher, student = FlowMatching(sampling_shift=0.5), ExactFlow(POINTS), Student()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4096, 2, generator=g)
    with torch.no_grad():
        x = euler(flow.denoiser(teacher), z, flow.sampling_schedule(32))
    reg = OneStepRegression(flow, flow.sampling_schedule(32))
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for _ in range(800):
        i = torch.randint(0, len(z), (256,), generator=g)
        loss = reg.loss(student, x[i], noise=z[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    student_err, teacher_err, same_point = one_step_against_teacher(reg, student, flow, teacher)
    # measured: student 0.08, teacher 0.73
    assert teacher_err > 0.6 and student_err < 0.3, (student_err, teacher_err)
    assert same_point > 0.95, same_point  # measured: 0.996


def test_one_step_regression_needs_a_grid_with_a_step():
    flow = FlowMatching()
    empty = flow.sampling_schedule(1)
    empty = type(empty)(empty.alpha[:1], empty.sigma[:1], empty.model_time[:1])
    with pytest.raises(ValueError, match="at least one step"):
        OneStepRegression(flow, empty)
