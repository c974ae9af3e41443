"""rCM's pieces: the JVP through a real Wan DiT against finite differences, the flow-matching ↔ TrigFlow map, the
sCM tangent on Gaussian data (zero at the closed-form consistency function, and a student that converges to it),
the DMD regulariser's phases, and the planner's passes."""

import math

import pytest
import torch

from distill.students import registry
from distill.students.base import Context, DitShape
from distill.students.common import per_sample
from distill.students.rcm import RCM, MathAttention, RCMConfig, flow_to_trig, jvp, trig_F, trig_to_flow

CTX = Context(teacher_shift=3.0, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=32, heads=2)


def recipe(**overrides) -> RCM:
    return RCM(RCMConfig(name="rcm", **overrides), CTX)


# --- Gaussian data: every map in closed form ----------------------------------------------------------------------
MU = torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
SIG = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64).view(1, 3, 1, 1, 1)


def spread(t, sig):
    """The std of x_t = (1 − t)·x0 + t·ε for x0 ~ N(mu, sig²): s(t) = sqrt((1 − t)²·sig² + t²)."""
    return torch.sqrt((1 - t) ** 2 * sig ** 2 + t ** 2)


def flow_map(x, t, mu, sig):
    """The probability-flow ODE's map to t = 0 (the consistency function): standardise at t, rescale at 0."""
    t = per_sample(t, x)
    return mu + sig * (x - (1 - t) * mu) / spread(t, sig)


def exact_velocity(x, t, guidance=None):
    """dx/dt along the ODE x(t) = (1 − t)·mu + s(t)·z: −mu + s'(t)/s(t)·(x − (1 − t)·mu)."""
    t = per_sample(t, x)
    s = spread(t, SIG)
    ds = (t - (1 - t) * SIG ** 2) / s
    return -MU + ds / s * (x - (1 - t) * MU)


class Student(torch.nn.Module):
    """v_θ = (x − f_θ(x, t)) / t with f_θ the Gaussian flow map of a trainable mean and log-std per channel: the
    family holds the exact consistency function, and only there is f_θ constant along the teacher's ODE."""

    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(1, 3, 1, 1, 1, dtype=torch.float64))
        self.log_sig = torch.nn.Parameter(torch.zeros(1, 3, 1, 1, 1, dtype=torch.float64))

    def forward(self, x, t, guidance=None):
        return (x - flow_map(x, t, self.mu, self.log_sig.exp())) / per_sample(t, x)


def test_time_and_velocity_maps_are_the_same_path():
    s = torch.linspace(0.01, math.pi / 2 - 0.01, 17, dtype=torch.float64)
    x0, eps = torch.randn(17, 3, 1, 1, 1, dtype=torch.float64), torch.randn(17, 3, 1, 1, 1, dtype=torch.float64)
    for sd in (1.0, 0.5):
        t = trig_to_flow(s, sd)
        torch.testing.assert_close(flow_to_trig(t, sd), s)
        x_s = per_sample(torch.cos(s), x0) * x0 + per_sample(torch.sin(s), x0) * sd * eps
        x_t = per_sample(1 - t, x0) * x0 + per_sample(t, x0) * eps
        c = per_sample(torch.cos(s) + sd * torch.sin(s), x0)
        torch.testing.assert_close(x_s / c, x_t)  # one path, rescaled
        # the exact velocity of this pair, v = ε − x0, gives TrigFlow's F = cos s·ε − sin s·x0/σ_d, and the
        # consistency function cos s·x_s − sin s·σ_d·F is x0 = x_t − t·v
        F = trig_F(lambda x, tt: eps - x0, x_s, s, sd)
        torch.testing.assert_close(F, per_sample(torch.cos(s), x0) * eps - per_sample(torch.sin(s), x0) * x0 / sd)
        torch.testing.assert_close(per_sample(torch.cos(s), x0) * x_s - per_sample(torch.sin(s), x0) * sd * F, x0)


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_tangent_vanishes_at_the_closed_form_consistency_function(sigma_data):
    r = recipe(sigma_data=sigma_data, dmd={"weight": 0})
    x0 = MU + SIG * torch.randn(256, 3, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = Student()
    with torch.no_grad():
        exact.mu.copy_(MU), exact.log_sig.copy_(SIG.log())
    out = r.scm_loss(exact, exact_velocity, x0, torch.Generator().manual_seed(1))
    assert out["scm_g_norm"] < 1e-9  # d f/ds = 0 along the ODE: no direction to move
    off = r.scm_loss(Student(), exact_velocity, x0, torch.Generator().manual_seed(1))
    assert off["scm_g_norm"] > 0.1


@pytest.mark.parametrize("sigma_data", [0.5])
def test_student_converges_to_the_closed_form_consistency_function(sigma_data):
    r = recipe(sigma_data=sigma_data, dmd={"weight": 0})
    student = Student()
    opt = torch.optim.Adam(student.parameters(), lr=0.08)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):  # 0.5 % off after 100 steps, 3e-7 after 300
        x0 = MU + SIG * torch.randn(64, 3, 1, 1, 1, dtype=torch.float64, generator=gen)
        opt.zero_grad()
        r.scm_loss(student, exact_velocity, x0, gen)["scm"].backward()
        opt.step()
    torch.testing.assert_close(student.mu.detach(), MU, atol=0.02, rtol=0)
    torch.testing.assert_close(student.log_sig.detach().exp(), SIG, atol=0, rtol=0.02)
    x = torch.randn(64, 3, 1, 1, 1, dtype=torch.float64, generator=gen)
    t = torch.full((64,), 0.9, dtype=torch.float64)
    one_step = x - per_sample(t, x) * student(x, t).detach()  # the 1-step sampler's x0 from t = 0.9
    torch.testing.assert_close(one_step, flow_map(x, t, MU, SIG), atol=0.1, rtol=0)


def test_tangent_warmup_starts_as_regression_on_the_teacher():
    """At r = 0 the target is F⁻ − cos²s·(σ_d·F⁻ − dx/ds)/norm: the JVP term is off, and a student equal to the
    teacher's velocity has nothing to learn."""
    r = recipe(dmd={"weight": 0}, tangent_warmup=10)
    assert r.warmup(0) == 0 and r.warmup(5) == 0.5 and r.warmup(20) == 1
    x0 = MU + SIG * torch.randn(64, 3, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = r.scm_loss(exact_velocity, exact_velocity, x0, torch.Generator().manual_seed(1), r=0.0)
    assert out["scm_g_norm"] < 1e-9 and out["scm"] < 1e-12
    assert r.scm_loss(exact_velocity, exact_velocity, x0, torch.Generator().manual_seed(1))["scm_g_norm"] > 0.1


# --- the JVP through a real DiT ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wan(untrained_wan):
    """The tiny Wan teacher as training runs it (fp32, through Teacher.forward), and its DiT in float64."""
    import copy

    from distill.teachers.registry import family

    teacher = family("wan").load(untrained_wan, torch.float32, torch.device("cpu"), 16)
    embeds = teacher.embed(["a red circle moving left", "a blue square"])
    return teacher, embeds, copy.deepcopy(teacher.dit).double()


def test_jvp_through_the_wan_dit_matches_finite_differences(wan):
    """Forward-mode AD through the whole DiT (attention on the math path) against central differences with
    Richardson extrapolation, in float64; the floor is the DiT's fp32 internals (diffusers computes its norms and
    sinusoidal time embedding in fp32), not the JVP. Then the fp32 JVP through Teacher.forward, as training runs
    it, against the float64 one."""
    teacher, embeds, dit64 = wan
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 2, 16, 16, dtype=torch.float64, generator=gen)
    s = torch.tensor([0.4, 1.2], dtype=torch.float64)
    tx = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    ts = torch.tensor([0.6, -0.3], dtype=torch.float64)
    e64 = embeds.double()

    def F(x, s):
        return trig_F(lambda xx, t: dit64(hidden_states=xx, timestep=t * 1000, encoder_hidden_states=e64,
                                          return_dict=False)[0], x, s, 1.0)

    mode = MathAttention(chunk=16)  # 2 x 4 x 4 = 32 tokens per clip: two query chunks per self-attention call
    with torch.no_grad(), torch.autograd.forward_ad.dual_level(), mode:
        dual = F(torch.autograd.forward_ad.make_dual(x, tx), torch.autograd.forward_ad.make_dual(s, ts))
        primal, tangent = (v.clone() for v in torch.autograd.forward_ad.unpack_dual(dual))
    assert mode.calls == 2 * 2  # self- and cross-attention in both blocks went through the math path
    _, again = jvp(F, (x, s), (tx, ts), chunk=1024)
    torch.testing.assert_close(again, tangent, rtol=1e-9, atol=1e-12)  # chunking changes no number

    def central(h):
        with torch.no_grad():
            return (F(x + h * tx, s + h * ts) - F(x - h * tx, s - h * ts)) / (2 * h)

    h = 3e-4
    fd = (4 * central(h / 2) - central(h)) / 3
    error = ((tangent - fd).norm() / fd.norm()).item()
    print(f"JVP vs finite differences (float64): relative error {error:.2e}")
    assert error < 2e-3, error

    def F32(x, s):
        return trig_F(lambda xx, t: teacher.forward(teacher.dit, xx, t, embeds), x, s, 1.0)

    primal32, tangent32 = jvp(F32, (x.float(), s), (tx.float(), ts))
    with torch.no_grad():
        torch.testing.assert_close(primal32, F32(x.float(), s))  # the JVP's primal is the plain forward's
    torch.testing.assert_close(primal32.double(), primal, rtol=1e-4, atol=1e-4)
    error32 = ((tangent32.double() - tangent).norm() / tangent.norm()).item()
    print(f"fp32 JVP through Teacher.forward vs float64: relative error {error32:.2e}")
    assert error32 < 1e-4, error32


# --- the recipe -----------------------------------------------------------------------------------------------------
def test_phases_warm_up_on_scm_then_add_the_critic():
    r = recipe(tangent_warmup=3, dmd={"critic_steps": 2})
    assert [r.phases(s) for s in (0, 2)] == [("student",)] * 2
    assert r.phases(3) == ("critic", "critic", "student")
    assert [n.name for n in r.networks()] == ["critic"]
    assert recipe(dmd={"weight": 0}).networks() == [] and recipe(dmd={"weight": 0}).phases(100) == ("student",)


def test_student_loss_adds_the_dmd_term_after_the_warmup():
    r = recipe(tangent_warmup=1, dmd={"critic_steps": 1}, sampler={"steps": 2})
    critic_calls = []

    def critic(x, t, guidance=None):
        critic_calls.append(x.shape[0])
        return exact_velocity(x, t) + 0.3  # a fake score off the real one: a non-zero DMD gradient

    nets = {"student": Student(), "teacher": exact_velocity, "critic": critic}
    x0 = MU + SIG * torch.randn(8, 3, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r.phases(0)
    warm = r.loss("student", nets, x0, torch.Generator().manual_seed(1))
    assert "dmd" not in warm and not critic_calls
    assert warm["student"].item() == pytest.approx(100 * warm["scm"].item())
    r.phases(1)
    assert set(r.loss("critic", nets, x0, torch.Generator().manual_seed(1))) >= {"critic", "critic_fm"}
    out = r.loss("student", nets, x0, torch.Generator().manual_seed(1))
    assert out["dmd"] > 0 and out["student"].item() == pytest.approx(100 * out["scm"].item() + out["dmd"].item())
    out["student"].backward()
    assert nets["student"].mu.grad.abs().sum() > 0


def test_registry_finds_rcm_and_its_sampler_is_the_consistency_one():
    assert registry.get("rcm") is RCM
    spec = recipe(sampler={"steps": 2}).sampler()
    assert (spec.name, spec.steps, spec.shift) == ("consistency", 2, 3.0)


def test_plan_counts_the_jvp_as_a_pass_with_tangents():
    dit = DitShape(params=1000, block_params=400, depth=2, dim=32, heads=2, frozen_output_params=10)
    plan = recipe(dmd={"weight": 0}).plan(dit)
    (passes,) = plan.phases.values()
    assert [(p.network, p.batch, p.grad) for p in passes] == [("teacher", 2, False), ("student", 2, False),
                                                              ("student", 1, True)]
    with_dmd = recipe().plan(dit)
    assert [n.name for n in with_dmd.networks] == ["critic"]
    generator = next(v for k, v in with_dmd.phases.items() if k.startswith("sCM + DMD"))
    assert generator[:3] == passes and len(generator) > 3
