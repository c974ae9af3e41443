import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pydantic import ValidationError

from distill.students.base import Context
from distill.students.consistency import ConsistencyConfig, ConsistencyDistillation
from distill.teachers.samplers import consistency_timesteps, sample_consistency


def cd(shift: float = 3.0, **config) -> ConsistencyDistillation:
    """The recipe on the teacher's 50-step grid at `shift`, with `config` as its recipe section."""
    ctx = Context(teacher_shift=shift, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=32, heads=2)
    return ConsistencyDistillation(ConsistencyConfig(name="consistency", **config), ctx)


def point_mass_velocity(x0):
    """The exact flow-matching velocity when all data sit at x0: v(x_t, t) = (x_t − x0) / t."""
    return lambda x, t: (x - x0) / t.view(-1, *([1] * (x.dim() - 1))).to(x)


def test_cd_loss_vanishes_for_an_exact_teacher_and_matching_student():
    x0 = torch.randn(4, 3, 2, 4, 4)
    v = point_mass_velocity(x0)
    recipe = cd(skip=5, distance="l2")
    out = recipe(v, v, v, x0, torch.Generator().manual_seed(0))
    assert out["student"].item() < 1e-9


def test_cd_gradient_reaches_the_student_only():
    x0 = torch.randn(2, 3, 2, 4, 4)
    student_w, teacher_w = torch.nn.Parameter(torch.tensor(0.5)), torch.nn.Parameter(torch.tensor(1.0))
    student = lambda x, t: student_w * x  # noqa: E731
    teacher = lambda x, t: teacher_w * (x - x0)  # noqa: E731
    recipe = cd(skip=10)
    loss = recipe(student, teacher, teacher, x0, torch.Generator().manual_seed(1))["student"]
    loss.backward()
    assert loss.item() > 0 and student_w.grad is not None and student_w.grad != 0
    assert teacher_w.grad is None


def test_bad_recipe_settings_are_refused():
    with pytest.raises(ValueError, match="skip=60"):
        cd(skip=60)
    with pytest.raises(ValidationError, match="distance"):
        cd(distance="l1")


def test_multistep_sampler_equals_diffusers_stochastic_euler():
    torch.manual_seed(0)
    weight = torch.randn(3, 3) * 0.3
    model = lambda x, t: torch.einsum("ij,bjthw->bithw", weight, x) * (1 + t.view(-1, 1, 1, 1, 1).float())  # noqa
    x = torch.randn(2, 3, 2, 4, 4)
    ts = consistency_timesteps(4, shift=3.0)
    g = torch.Generator().manual_seed(7)
    ours = sample_consistency(model, x, ts, noise=lambda like: torch.randn(like.shape, generator=g))

    # The scheduler's own grid for 4 steps (what a stock WanPipeline sets), not timesteps passed in.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    scheduler.set_timesteps(4)
    assert torch.allclose(scheduler.sigmas[:-1].double(), ts, atol=1e-6)
    g2 = torch.Generator().manual_seed(7)
    y = x.clone()
    for t in scheduler.timesteps:
        sigma = (t / 1000).to(torch.float64).expand(2)
        y = scheduler.step(model(y, sigma), t, y, generator=g2, return_dict=False)[0]
    torch.testing.assert_close(ours, y, atol=1e-5, rtol=1e-5)
    assert consistency_timesteps(1).tolist() == [1.0]
