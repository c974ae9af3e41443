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


def test_generator_loss_reaches_the_generator():
    disc = Discriminator(tiny_dit(3), (0.5, 1.0))
    student_w = torch.nn.Parameter(torch.tensor(0.3))
    recipe = AdversarialPostTraining()
    out = recipe.loss("student", nets_for(student_w, disc), torch.randn(2, 4, 2, 8, 8),
                      torch.Generator().manual_seed(0))
    out["student"].backward()
    assert student_w.grad is not None and student_w.grad != 0


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
