import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pydantic import ValidationError

from distill.students.base import Context
from distill.students.common import per_sample
from distill.students.consistency import ConsistencyConfig, ConsistencyDistillation
from distill.teachers.samplers import consistency_timesteps, sample_consistency, student_levels
from distill.teachers.schedule import few_step_scheduler


def cd(shift: float = 3.0, **config) -> ConsistencyDistillation:
    """The recipe on the teacher's 50-step grid at `shift`, with `config` as its recipe section."""
    ctx = Context(teacher_shift=shift, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=32, heads=2)
    return ConsistencyDistillation(ConsistencyConfig(name="consistency", **config), ctx)


class GaussianFlow:
    """Data x0 ~ N(mu, s²) per element on the flow-matching path x_t = (1 − t)·x0 + t·ε, in closed form: x_t is
    N((1 − t)·mu, σ_t²) with σ_t² = (1 − t)²·s² + t², the probability-flow ODE moves x_t = (1 − t)·mu + σ_t·z at
    fixed z, so its velocity is v(x, t) = −mu + (σ_t′/σ_t)·(x − (1 − t)·mu) with σ_t′ = (t − (1 − t)·s²)/σ_t, and
    its flow map to t = 0 (the consistency function) is f(x, t) = mu + (s/σ_t)·(x − (1 − t)·mu)."""

    def __init__(self, mu: float = 0.7, s: float = 0.5):
        self.mu, self.s, self.calls = mu, s, []

    def sigma(self, t):
        return ((1 - t) ** 2 * self.s ** 2 + t ** 2).sqrt()

    def velocity(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        tt = per_sample(t, x).double()
        sigma = self.sigma(tt)
        return -self.mu + (tt - (1 - tt) * self.s ** 2) / sigma ** 2 * (x - (1 - tt) * self.mu)

    def flow_map(self, x, t):
        tt = per_sample(t, x).double()
        return self.mu + self.s / self.sigma(tt) * (x - (1 - tt) * self.mu)

    def consistency_velocity(self, x, t):
        """The velocity of a student whose x0 = x − t·v is the exact flow map (calls recorded)."""
        self.calls.append((x.clone(), t.clone()))
        return (x - self.flow_map(x, t)) / per_sample(t, x).double()


def test_cd_loss_is_algorithm_2_in_closed_form_on_gaussian_data():
    """On the recipe's own grid (50 steps, skip 5): the teacher is queried at (x_t, t = σ_n), the target at the
    Euler step of the exact ODE to t′ = σ_{n+5}, and the loss is d(f_θ(x_t, t), f_θ⁻(x_t′, t′)), every piece in
    closed form. A flipped ODE step, a wrong t′ or a target at the wrong level changes one of them."""
    flow, student, target = GaussianFlow(), GaussianFlow(mu=0.2, s=0.9), GaussianFlow(mu=-0.3, s=0.6)
    recipe = cd(skip=5, distance="l2")
    x0 = 0.7 + 0.5 * torch.randn(6, 3, 2, 4, 4, dtype=torch.float64)
    out = recipe(student.consistency_velocity, flow.velocity, target.consistency_velocity, x0,
                 torch.Generator().manual_seed(0))
    (x_t, t), = flow.calls
    (x_s, t_s), = student.calls
    (x_prev, t_prev), = target.calls
    assert torch.equal(x_s, x_t) and torch.equal(t_s, t)  # the student sees the teacher's input
    sigmas = recipe.sigmas.double()
    n = torch.stack([(sigmas - ti).abs().argmin() for ti in t])
    assert torch.equal(sigmas[n], t) and len(set(n.tolist())) > 1
    assert torch.equal(t_prev, sigmas[n + 5])  # t′ = σ_{n+skip}: 5 grid steps toward 0
    dt = per_sample(t_prev - t, x_t)
    torch.testing.assert_close(x_prev, x_t + dt * GaussianFlow().velocity(x_t, t), rtol=0, atol=1e-12)
    expected = (student.flow_map(x_t, t) - target.flow_map(x_prev, t_prev)).pow(2).flatten(1).mean(1).mean()
    torch.testing.assert_close(out["student"], expected.to(out["student"].dtype), rtol=1e-6, atol=0)


def test_cd_loss_vanishes_at_the_exact_flow_map_of_gaussian_data():
    """A student and target equal to the closed-form consistency function f, a teacher equal to the exact
    velocity: on a fine grid the loss is Euler's O(Δt²) error alone. Unlike point-mass data (where x − t·v = x0
    from any x), f depends on x and t here, so a step in the wrong direction or to the wrong level does not vanish."""
    flow = GaussianFlow()
    recipe = cd(skip=1, grid_steps=1000, distance="l2")
    x0 = 0.7 + 0.5 * torch.randn(64, 3, 2, 4, 4, dtype=torch.float64)
    f = flow.consistency_velocity
    loss = recipe(f, flow.velocity, f, x0, torch.Generator().manual_seed(0))["student"].item()
    assert loss < 1e-10, loss
    off = GaussianFlow(s=0.55).consistency_velocity  # the flow map of slightly other data: clearly nonzero
    assert recipe(off, flow.velocity, f, x0, torch.Generator().manual_seed(0))["student"].item() > 1e3 * loss


@pytest.mark.parametrize("grid", ["euler", "shifted-uniform", "uniform", (1.0, 0.6, 0.2)])
def test_multistep_sampler_with_the_exact_flow_map_draws_the_data_distribution(grid):
    """With the exact consistency function every grid samples N(mu, s²) exactly: each step jumps to a clean
    sample and re-noises it with fresh noise, so the last x0 is exact whatever the levels."""
    flow = GaussianFlow(mu=0.7, s=0.5)
    levels = student_levels(len(grid) if isinstance(grid, tuple) else 4, 3.0, grid)
    x = torch.randn(4, 8, 8, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    out = sample_consistency(flow.consistency_velocity, x, levels,
                             noise=lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype))
    assert [float(t[0]) for _, t in flow.calls] == levels.tolist()
    assert abs(out.mean().item() - 0.7) < 0.02 and abs(out.std().item() - 0.5) < 0.01


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


@pytest.mark.parametrize("grid", ["shifted-uniform", "uniform", (1.0, 0.8, 0.3, 0.1)])
def test_multistep_sampler_on_a_grid_equals_the_exported_scheduler(grid):
    """What `distill export` writes for a grid (a static shift and shift_terminal, found from the grid) makes the
    stock scheduler's own `set_timesteps(4)` land on the levels, and sample as the project's sampler does."""
    levels = student_levels(4, 3.0, grid)
    if grid == (1.0, 0.8, 0.3, 0.1):  # 1/(1 − level) is not affine in 1/i: no scheduler config reaches it
        with pytest.raises(ValueError, match="no FlowMatchEulerDiscreteScheduler config reproduces"):
            few_step_scheduler(levels)
        return
    torch.manual_seed(0)
    weight = torch.randn(3, 3) * 0.3
    model = lambda x, t: torch.einsum("ij,bjthw->bithw", weight, x) * (1 + t.view(-1, 1, 1, 1, 1).float())  # noqa
    x = torch.randn(2, 3, 2, 4, 4)
    ours = sample_consistency(model, x, levels, noise=lambda like: torch.randn(like.shape,
                                                                            generator=torch.Generator().manual_seed(7)))
    scheduler = few_step_scheduler(levels)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)  # as a saved folder reloads it
    scheduler.set_timesteps(4)
    assert (scheduler.sigmas[:-1].double() - levels).abs().max() < 1e-6 and levels[-1] >= 0.1
    y = x.clone()
    for t in scheduler.timesteps:
        sigma = (t / 1000).to(torch.float64).expand(2)
        y = scheduler.step(model(y, sigma), t, y, generator=torch.Generator().manual_seed(7), return_dict=False)[0]
    torch.testing.assert_close(ours, y, atol=1e-5, rtol=1e-5)


def test_grid_rules_and_explicit_levels():
    assert student_levels(4, 3.0, "shifted-uniform").tolist() == [1.0, 0.9, 0.75, 0.5]
    assert student_levels(4, 3.0, "uniform").tolist() == [1.0, 0.75, 0.5, 0.25]
    assert student_levels(4, 3.0, "euler").tolist() == consistency_timesteps(4, 3.0).tolist()
    assert student_levels(4, 3.0).tolist() == consistency_timesteps(4, 3.0).tolist()  # None: the legacy grid
    assert cd(sampler={"steps": 4}).sampler().grid == "shifted-uniform"  # new runs: every step a real step
    assert cd(sampler={"steps": 2, "grid": [1, 0.5]}).sampler().levels().tolist() == [1.0, 0.5]
    for bad, match in (("bogus", "unknown grid"), ([1.0, 0.5], "2 levels for 4 steps"),
                       ([0.9, 0.5, 0.3, 0.1], "starts at 1.0"), ([1.0, 0.5, 0.6, 0.1], "decrease strictly")):
        with pytest.raises(ValidationError, match=match):
            cd(sampler={"steps": 4, "grid": bad})


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
