"""APT's pieces: where the discriminator's heads sit, the approximated R1 term, and the alternation."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from distill.students.apt import AdversarialPostTraining
from distill.students.common import HeadedDiT as Discriminator, head_blocks


def tiny_dit(layers: int = 6) -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=8, freq_dim=32, ffn_dim=64, num_layers=layers,
                                 rope_max_seq_len=64)


def test_heads_sit_at_the_configured_fractions_of_depth():
    assert head_blocks(6, (0.45, 0.70, 1.0)) == [2, 4, 5]  # after blocks 3, 5 and 6 of 6
    assert head_blocks(30, (0.45, 0.70, 1.0)) == [13, 20, 29]  # Wan 1.3B: after blocks 14, 21, 30
    with pytest.raises(ValueError, match="same blocks"):
        head_blocks(2, (0.45, 0.70, 1.0))


def test_discriminator_reads_exactly_the_configured_blocks():
    disc = Discriminator(tiny_dit(6), (0.45, 0.70, 1.0))
    seen = []
    for i, block in enumerate(disc.backbone.blocks):
        block.register_forward_hook(lambda m, a, out, i=i: seen.append((i, out.detach().clone())))
    x = torch.randn(3, 4, 2, 8, 8)
    logits = disc(x, torch.full((3,), 500.0), torch.randn(3, 5, 8))[0]
    assert logits.shape == (3,)
    outputs = dict(seen)
    # Each head's input is the output of its block: recompute the pooled features from the hooked outputs.
    pooled = torch.cat([head(outputs[i]) for head, i in zip(disc.heads, disc.blocks)], dim=-1)
    torch.testing.assert_close(disc.out(disc.norm(pooled)).squeeze(-1), logits)
    assert disc.blocks == [2, 4, 5] and len(disc.heads) == 3
    assert all(len(b._forward_hooks) == 1 for b in disc.backbone.blocks)  # its own hooks were removed


def nets_for(student_w, disc):
    student = lambda x, t: student_w * x  # noqa: E731
    embeds = torch.randn(1, 5, 8)

    def d(x, t):
        return disc(x, (t * 1000).float(), embeds.expand(x.shape[0], -1, -1))[0]
    return {"student": student, "discriminator": d}


def test_approximated_r1_is_nonzero_and_its_gradient_reaches_only_the_discriminator():
    disc = Discriminator(tiny_dit(3), (0.5, 1.0))
    student_w = torch.nn.Parameter(torch.tensor(0.3))
    recipe = AdversarialPostTraining(shift=12.0, r1_weight=100.0, r1_sigma=0.1)
    x = torch.randn(2, 4, 2, 8, 8)
    out = recipe.loss("discriminator", nets_for(student_w, disc), x, torch.Generator().manual_seed(0))
    assert out["r1"].item() > 0
    r1_only = AdversarialPostTraining(shift=12.0, r1_weight=1.0, r1_sigma=0.1)
    out = r1_only.loss("discriminator", nets_for(student_w, disc), x, torch.Generator().manual_seed(0))
    (out["discriminator"] - out["d_gan"]).backward()  # the R1 term alone
    grads = [p.grad for p in disc.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert student_w.grad is None  # the generator's sample is detached in D's phase


class LinearD:
    """D(x_t, t) = a·mean(x_t) + b: a discriminator whose GAN losses have closed-form gradients (calls recorded)."""

    def __init__(self, a: float, b: float = 0.0):
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.calls = []

    def __call__(self, x, t, guidance=None):
        self.calls.append((x.detach().clone(), t.clone()))
        return self.a * x.flatten(1).mean(1) + self.b


def constant_generator(c: torch.Tensor):
    """A one-step student whose sample is the trainable constant c: x̂ = z − v(z, 1) = c."""
    return lambda z, t: z - c


def test_discriminator_gan_loss_has_the_non_saturating_closed_form_gradient():
    """L_D = softplus(−D(x_t)) + softplus(D(x̂_t)) (means over the batch) with D = a·m + b, m the mean of the input:
    ∂L_D/∂a = mean(−m_real·σ(−D_real)) + mean(m_fake·σ(D_fake)), ∂L_D/∂b = mean(−σ(−D_real)) + mean(σ(D_fake)).
    Real clips sit at +1 and the generator's samples at −1, so descending L_D raises D on real clips and lowers it
    on fakes; swapped signs (or swapped real and fake halves) reverse both."""
    d = LinearD(0.8, 0.1)
    c = torch.nn.Parameter(torch.full((1, 4, 2, 8, 8), -1.0, dtype=torch.float64))
    recipe = AdversarialPostTraining(shift=1.0, r1_weight=0.0)
    x = torch.ones(8, 4, 2, 8, 8, dtype=torch.float64)
    out = recipe.loss("discriminator", {"student": constant_generator(c), "discriminator": d}, x,
                      torch.Generator().manual_seed(0))
    out["discriminator"].backward()
    (inputs, t), = d.calls
    real_t, fake_t, _ = inputs.chunk(3)
    m_real, m_fake = real_t.flatten(1).mean(1), fake_t.flatten(1).mean(1)
    tt = t[:8]
    clear = tt < 0.8  # where the data still shows through the noise: real first, then fake
    assert clear.sum() >= 3 and torch.all(m_real[clear] > 0) and torch.all(m_fake[clear] < 0)
    a, b = d.a.detach(), d.b.detach()
    s_real, s_fake = torch.sigmoid(-(a * m_real + b)), torch.sigmoid(a * m_fake + b)
    torch.testing.assert_close(d.a.grad, (-m_real * s_real).mean() + (m_fake * s_fake).mean())
    torch.testing.assert_close(d.b.grad, (-s_real).mean() + s_fake.mean())
    assert d.a.grad < 0  # descent raises D(real) − D(fake)
    assert c.grad is None  # the generator's samples are detached in D's phase


def test_generator_gan_loss_has_the_non_saturating_closed_form_gradient():
    """L_G = softplus(−D(x̂_t)), x̂_t = (1 − t)·c + t·ε: ∂L_G/∂c = −σ(−D(x̂_t))·a·(1 − t)/numel per element, summed
    over the batch and averaged: descending it moves the samples to where D says "real" (a > 0: up)."""
    d = LinearD(0.8, 0.1)
    c = torch.nn.Parameter(torch.full((1, 4, 2, 8, 8), -1.0, dtype=torch.float64))
    recipe = AdversarialPostTraining(shift=1.0)
    out = recipe.loss("student", {"student": constant_generator(c), "discriminator": d},
                      torch.ones(8, 4, 2, 8, 8, dtype=torch.float64), torch.Generator().manual_seed(0))
    out["student"].backward()
    (fake_t, t), = d.calls
    logits = d.a.detach() * fake_t.flatten(1).mean(1) + d.b.detach()
    per_element = (-torch.sigmoid(-logits) * d.a.detach() * (1 - t)).mean() / c[0].numel()
    torch.testing.assert_close(c.grad, torch.full_like(c, per_element.item()))
    assert per_element < 0  # descent raises c, toward D's "real"
    assert d.a.grad is not None  # (the engine freezes D in this phase; the loss itself reaches both)


def test_phases_alternate_discriminator_then_generator():
    assert AdversarialPostTraining().phases(0) == ("discriminator", "student")
    assert AdversarialPostTraining(d_steps=2).phases(7) == ("discriminator", "discriminator", "student")


def test_one_step_generator_is_the_flow_matching_jump_from_pure_noise():
    z = torch.randn(2, 4, 2, 8, 8)
    v = torch.randn_like(z)
    seen = []
    x0 = AdversarialPostTraining.generate(lambda x, t: (seen.append(t), v)[1], z)
    torch.testing.assert_close(x0, z - v)
    assert seen[0].tolist() == [1.0, 1.0]
