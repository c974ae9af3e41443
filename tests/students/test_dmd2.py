"""DMD2's pieces: the distribution-matching gradient on a Gaussian toy with closed-form scores, the critic's
flow-matching loss, the two time-scale phases, backward simulation, the GAN term, and its configs."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import WanTransformer3DModel
from pydantic import ValidationError

from distill.students import registry
from distill.students.base import Context, DitShape
from distill.students.common import HeadedDiT, per_sample
from distill.teachers.registry import family
from distill.students.dmd2 import DMD2, DMD2Config
from distill.teachers.samplers import consistency_timesteps

CTX = Context(teacher_shift=3.0, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=32, heads=2)


def recipe(**overrides) -> DMD2:
    return DMD2(DMD2Config(name="dmd2", **overrides), CTX)


class Gaussian:
    """The velocity of data N(mu, I) on the flow-matching path, in closed form: x_t = (1 − t)·x0 + t·ε gives
    E[x0 | x_t] = mu + (1 − t)/((1 − t)² + t²) · (x_t − (1 − t)·mu), and v = (x_t − E[x0 | x_t]) / t."""

    def __init__(self, mu: torch.Tensor):
        self.mu, self.calls = mu, []

    def x0(self, x, t):
        tt = per_sample(t, x)
        return self.mu + (1 - tt) / ((1 - tt) ** 2 + tt ** 2) * (x - (1 - tt) * self.mu)

    def __call__(self, x, t, guidance=None):  # unconditional: CFG of identical halves is the same velocity
        self.calls.append((x.clone(), t.clone()))
        return (x - self.x0(x, t)) / per_sample(t, x)


class Generator:
    """A student whose every step lands on fixed samples shifted by a trainable offset per channel: x̂ = c + b."""

    def __init__(self, c: torch.Tensor):
        self.c = c
        self.b = torch.nn.Parameter(torch.zeros(c.shape[1], dtype=c.dtype))
        self.calls = []

    def __call__(self, x, t, guidance=None):
        self.calls.append((x.clone(), t.clone()))
        return (x - (self.c + self.b.view(1, -1, 1, 1, 1))) / per_sample(t, x)


class Guided:
    """A text-conditional Gaussian network: N(mu_cond, I) with the prompt, N(mu_uncond, I) without. x0(x_t) is
    affine in mu with a slope that does not depend on mu, so classifier-free guidance w (uncond + w·(cond − uncond),
    on for w > 1) is exactly the Gaussian of mean mu_uncond + w·(mu_cond − mu_uncond). `default` is the guidance a
    call without one gets (the teacher's configured CFG for the teacher, 1 for any other network)."""

    def __init__(self, mu_cond, mu_uncond, default):
        self.mu_cond, self.mu_uncond, self.default, self.calls = mu_cond, mu_uncond, default, []

    def __call__(self, x, t, guidance=None):
        w = self.default if guidance is None else guidance
        mu = self.mu_uncond + w * (self.mu_cond - self.mu_uncond) if w > 1 else self.mu_cond
        self.calls.append((x.clone(), t.clone(), w))
        return Gaussian(mu)(x, t)


def gaussian_toy(mu_f, mu_r, steps=1, guidance=4.0):
    """The DMD gradient on b for generator samples from N(mu_f, I). The teacher is a conditional Gaussian whose
    guided mean at the recipe's guidance w is mu_r (its conditional and unconditional means differ, and its own
    default guidance is another w); the critic is the ideal fake score N(mu_f, I) with the prompt and another
    Gaussian without it, so guidance on the critic, or a teacher queried at another scale, changes the answer.
    Returns the gradient, the closed form of the paper's formula, and the recipe's outputs."""
    torch.manual_seed(0)
    c = mu_f + torch.randn(16, 3, 1, 2, 2, dtype=torch.float64)
    mu_u = mu_r - 1.5
    mu_c = mu_u + (mu_r - mu_u) / guidance  # guided at w: mu_u + w·(mu_c − mu_u) = mu_r
    student = Generator(c)
    teacher = Guided(mu_c, mu_u, default=CTX.teacher_guidance)
    critic = Guided(mu_f, mu_f + 2.0, default=1.0)
    out = recipe(sampler={"steps": steps}, guidance=guidance).loss(
        "student", {"student": student, "teacher": teacher, "critic": critic}, torch.zeros_like(c),
        torch.Generator().manual_seed(1))
    out["student"].backward()
    # The paper's gradient in closed form, at the teacher's input: g = (x0_fake − x0_real) / mean|x̂ − x0_real| per
    # sample, and ∂(½ mean‖x̂ − sg(x̂ − g)‖²)/∂x̂ = g / numel.
    (x_t, t, w), = teacher.calls
    assert w == guidance and [c_[2] for c_ in critic.calls] == [1.0]  # CFG on the teacher only
    real, fake = Gaussian(mu_r).x0(x_t, t), Gaussian(mu_f).x0(x_t, t)
    g = (fake - real) / per_sample((c - real).abs().flatten(1).mean(1), c)
    expected = (g / g.numel()).sum(dim=(0, 2, 3, 4))
    return student.b.grad, expected, out


def test_dmd_gradient_points_from_the_fake_mean_to_the_real_one():
    mu_f = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    mu_r = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    grad, expected, out = gaussian_toy(mu_f, mu_r)
    torch.testing.assert_close(grad, expected)
    # Both posteriors have the same slope in x_t, so x0_fake − x0_real = (t/s)²·(mu_f − mu_r) at every x_t: the
    # gradient is parallel to mu_f − mu_r (the guided teacher's mean, not its conditional one), and a descent step
    # moves the samples toward mu_r.
    direction = (mu_f - mu_r).flatten()
    assert torch.nn.functional.cosine_similarity(grad, direction, dim=0) > 1 - 1e-9
    assert grad[2] == 0  # the channel whose means agree gets no push
    assert out["dmd_grad_rms"] > 0 and 0.02 <= out["dmd_t"] <= 1


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_dmd_gradient_vanishes_when_the_student_matches_the_guided_teacher(guidance):
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    grad, _, out = gaussian_toy(mu, mu.clone(), steps=4, guidance=guidance)
    assert grad.abs().max() < 1e-15 and out["student"] < 1e-30


def tiny_dit(layers: int = 2) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=8, freq_dim=32, ffn_dim=64, num_layers=layers,
                                 rope_max_seq_len=64)


class DitHandle:
    """What the engine hands a loss for a DiT: velocity at t ∈ [0, 1], text bound; (velocity, logits) with heads."""

    def __init__(self, net):
        self.net, self.text = net, torch.randn(1, 5, 8)

    def _run(self, x, t, **kw):
        return self.net(x, (t * 1000).float(), self.text.expand(x.shape[0], -1, -1), **kw)

    def __call__(self, x, t, guidance=None):
        return self._run(x, t)[0]

    def with_heads(self, x, t):
        return self._run(x, t, heads=True)


def test_critic_flow_matching_loss_has_its_closed_form_minimum_at_the_ideal_fake_score():
    """Student samples x̂ ~ N(mu, I) per element, critic = the exact velocity of N(mu, I): the flow-matching loss
    ‖v_φ(x̂_t, t) − (ε − x̂)‖² is then the conditional variance of ε − x̂ given x̂_t, 2 − (2t − 1)²/((1 − t)² + t²)
    per element, in closed form. The target x̂ − ε (or any other) leaves a loss far above it."""
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    torch.manual_seed(0)
    student = Generator(mu + torch.randn(16, 3, 1, 16, 16, dtype=torch.float64))
    critic = Gaussian(mu)
    out = recipe().loss("critic", {"student": student, "critic": critic}, torch.zeros(16, 3, 1, 16, 16),
                        torch.Generator().manual_seed(0))
    (_, t), = critic.calls
    expected = (2 - (2 * t - 1) ** 2 / ((1 - t) ** 2 + t ** 2)).mean()
    assert abs(out["critic"].item() / expected.item() - 1) < 0.05, (out["critic"].item(), expected.item())
    assert out["critic"].requires_grad is False and student.b.grad is None  # detached samples, a fixed critic here
    # a critic off by a mean shift pays for it: the loss measures the fake score, not a constant
    worse = recipe().loss("critic", {"student": student, "critic": Gaussian(mu + 0.5)}, torch.zeros(16, 3, 1, 16, 16),
                          torch.Generator().manual_seed(0))
    assert worse["critic"].item() > out["critic"].item() + 0.1


def test_score_levels_are_shifted_then_clamped_and_the_critic_sees_the_full_range():
    """DMD2 and Self-Forcing: t = clamp(shift(u, s), 0.02, 0.98), u ~ U(0, 1); at s = 8 a share
    1 − u* (u* = 0.98/(8 − 7·0.98) = 0.8596) lands on 0.98. The critic's levels span (0, 1)."""
    ctx = Context(teacher_shift=8.0, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=32, heads=2)
    dmd = DMD2(DMD2Config(name="dmd2"), ctx)
    t = dmd.levels_t(20000, torch.Generator().manual_seed(0), "cpu")
    assert t.min() >= 0.02 and t.max() == 0.98
    assert abs((t == 0.98).double().mean().item() - (1 - 0.98 / (8 - 7 * 0.98))) < 0.01
    critic = dmd.critic_levels(20000, torch.Generator().manual_seed(0), "cpu")
    assert critic.min() < 0.02 and critic.max() > 0.99
    spy = Gaussian(torch.zeros(1, dtype=torch.float64))  # the critic phase itself takes those levels
    x = torch.zeros(512, 1, 1, 1, 1, dtype=torch.float64)
    dmd.loss("critic", {"student": Generator(x), "critic": spy}, x, torch.Generator().manual_seed(0))
    (_, t_critic), = spy.calls
    assert t_critic.max() > 0.98
    old = DMD2(DMD2Config(name="dmd2", t_sampling="range-then-shift", critic_full_range=False), ctx)
    t = old.levels_t(20000, torch.Generator().manual_seed(0), "cpu")
    assert t.min() > 0.139 and t.max() < 0.9975 and (t == 0.98).sum() == 0  # runs before the keys: [0.14, 0.997]
    assert torch.equal(old.critic_levels(5, torch.Generator().manual_seed(3), "cpu"),
                       old.levels_t(5, torch.Generator().manual_seed(3), "cpu"))
    assert dmd.fresh_batches is False and DMD2(DMD2Config(name="dmd2", fresh_critic_batch=True), ctx).fresh_batches


def test_phases_follow_the_two_time_scale_rule():
    assert recipe().phases(0) == ("critic",) * 5 + ("student",)
    assert recipe(critic_steps=2).phases(7) == ("critic", "critic", "student")
    with pytest.raises(ValueError, match="DMD2 trains"):
        recipe().loss("discriminator", {}, torch.zeros(1), None)


@pytest.mark.parametrize("override, key", [({"t_range": (0.9, 0.1)}, "t_range"),
                                           ({"critic_steps": 0}, "critic_steps"),
                                           ({"critic_betas": (1.5, 0.9)}, "critic_betas"),
                                           ({"gan_head_fractions": (0.5, 1.5)}, "gan_head_fractions"),
                                           ({"critic_lora": {"rank": 0}}, "critic_lora.rank"),
                                           ({"critic_lr": 1e-4, "bogus": 1}, "bogus")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ValidationError, match=key):
        DMD2Config(name="dmd2", **override)


def test_heads_on_one_block_name_the_key():
    with pytest.raises(ValueError, match="recipe.gan_head_fractions"):
        recipe(gan_weight=0.1, gan_head_fractions=(0.1, 0.2))  # both on block 1 of CTX's 2


@pytest.mark.parametrize("grid, expected", [("shifted-uniform", [1.0, 0.9, 0.75, 0.5]),  # shift 3 on [1, .75, .5, .25]
                                             ("euler", None), ((1.0, 0.7, 0.4, 0.2), [1.0, 0.7, 0.4, 0.2])])
def test_backward_simulation_feeds_the_generator_its_own_sampler_levels(grid, expected):
    levels = consistency_timesteps(4, CTX.teacher_shift) if expected is None else \
        torch.tensor(expected, dtype=torch.float64)
    student = Generator(torch.randn(8, 3, 1, 2, 2))
    with torch.no_grad():
        _, k = recipe(sampler={"steps": 4, "grid": grid}).sample(student, torch.zeros(8, 3, 1, 2, 2),
                                                                 torch.Generator().manual_seed(0), grad=False)
    # The sampler runs through its first 3 levels on the whole batch (the same count on every rank), then each
    # sample takes one step from the input the sampler reached at its own level k.
    assert len(student.calls) == 4
    for i, (_, t) in enumerate(student.calls[:3]):
        torch.testing.assert_close(t, levels[i].expand(8), rtol=0, atol=1e-12)
    x, t = student.calls[3]
    torch.testing.assert_close(t, levels[k], rtol=0, atol=1e-12)
    assert len(set(k.tolist())) > 1  # levels are drawn per sample
    for i in range(8):
        assert torch.equal(x[i], student.calls[k[i]][0][i])
    # the first level is pure noise at t = 1; later levels are the student's x0 re-noised (not data)
    assert levels[0] == 1.0

    student = Generator(torch.randn(8, 3, 1, 2, 2))
    recipe(backward_simulation=False).sample(student, torch.zeros(8, 3, 1, 2, 2), torch.Generator().manual_seed(0),
                                             grad=False)
    assert len(student.calls) == 1  # without it: one step from re-noised data


def test_gan_term_trains_critic_heads_and_reaches_the_generator():
    critic = HeadedDiT(tiny_dit(2), (0.5, 1.0), keep_output=True)
    x = torch.randn(2, 4, 2, 8, 8)
    student = Generator(torch.randn(2, 4, 2, 8, 8))
    nets = {"student": student, "critic": DitHandle(critic), "teacher": DitHandle(tiny_dit(2))}
    dmd2 = recipe(gan_weight=0.1, gan_head_fractions=(0.5, 1.0))
    out = dmd2.loss("critic", nets, x, torch.Generator().manual_seed(0))
    out["critic"].backward()
    assert out["d_gan"] > 0 and all(p.grad is not None for p in critic.heads.parameters())
    critic.requires_grad_(False)  # as the engine freezes the critic in the generator phase
    out = dmd2.loss("student", nets, x, torch.Generator().manual_seed(0))
    out["student"].backward()
    assert out["g_gan"] > 0 and student.b.grad.abs().sum() > 0
    assert [s.name for s in dmd2.networks()] == ["critic"] and dmd2.networks()[0].make is not None


def test_check_run_refuses_the_gan_term_without_real_clips():
    def run(gan_weight, latents):
        return SimpleNamespace(recipe=DMD2Config(name="dmd2", gan_weight=gan_weight),
                               data=SimpleNamespace(latents=latents))
    with pytest.raises(ValueError, match="recipe.gan_weight.*data.latents"):
        DMD2.check_run(run(0.01, "teacher"))
    DMD2.check_run(run(0.01, "real"))
    DMD2.check_run(run(0.0, "teacher"))  # without the GAN term any x0 will do


def test_registry_finds_dmd2():
    assert registry.get("dmd2") is DMD2 and "dmd2" in registry.names()


def test_plan_counts_the_critic_and_its_lora():
    from peft import LoraConfig

    dit = tiny_dit(2)
    params = sum(p.numel() for p in dit.parameters())
    block = sum(p.numel() for p in dit.blocks[0].parameters())
    before = params
    dit.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(family("wan").lora_targets)))
    lora = sum(p.numel() for p in dit.parameters()) - before
    assert lora > 0 and lora % 4 == 0  # r·(in + out) per adapted layer: linear in the rank
    shape = DitShape(params=params, block_params=block, depth=2, dim=32, heads=2, frozen_output_params=0,
                     lora_per_rank=lora // 4)
    full = recipe().plan(shape)
    assert full.networks[0].params == params and full.networks[0].frozen_params == 0
    low = recipe(critic_lora={"rank": 4, "alpha": 4.0}).plan(shape)
    assert low.networks[0].params == params + lora and low.networks[0].frozen_params == params
    assert any(p.network == "teacher" and p.batch == 2 and not p.grad for ps in full.phases.values() for p in ps)
