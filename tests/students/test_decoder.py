"""Decoder distillation (students/decoder.py): its target is the teacher VAE's decode of the latents (not the input,
not the latents), its loss math, its networks through the recipe contract, and a few steps that lower the loss
against the tiny teacher's real VAE."""

from pathlib import Path

import pytest
import torch

from distill.students.base import FRESH, Context
from distill.students.decoder import DecoderConfig, DecoderDistillation, RandomFeatures, to_signed
from distill.teachers.base import VideoFactors
from distill.teachers.decoders import VideoDecoder

TINY = Path(__file__).resolve().parents[2] / "teachers" / "builtin" / "tiny-wan"


def recipe(**config) -> DecoderDistillation:
    ctx = Context(teacher_shift=3.0, teacher_guidance=5.0, teacher_steps=50, depth=2, dim=32, heads=2,
                  latent_channels=8, factors=VideoFactors(temporal=4, spatial=4, patch=(1, 2, 2)))
    sizes = {"width": 16, "depth": 1, "min_width": 8}
    return DecoderDistillation(DecoderConfig(name="decoder", **{**sizes, **config}), ctx)


class FakeVAE:
    """A 'VAE decode' with a known answer: latents [B, 8, F, h, w] to uint8 clips [B, T, 4h, 4w, 3], each frame a
    function of its latent frame that differs from the input; it records what it was asked to decode."""

    def __init__(self):
        self.seen = []

    def __call__(self, z):
        self.seen.append(z.clone())
        frames = torch.cat([z[:, :3, :1], z[:, :3, 1:].repeat_interleave(4, dim=2)], dim=2)  # [B, 3, T, h, w]
        pixels = torch.sigmoid(frames.repeat_interleave(4, 3).repeat_interleave(4, 4) * 2 + 0.5)
        return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def test_the_recipe_trains_a_fresh_decoder_and_no_student():
    r = recipe()
    (spec,) = r.networks()
    assert spec.name == "decoder" and spec.init == FRESH and spec.trains
    net = spec.make(None)
    assert isinstance(net, VideoDecoder)
    assert (net.config.latent_channels, net.config.temporal, net.config.spatial) == (8, 4, 4)
    assert r.trains_student is False and r.reads == ("vae",) and r.phases(0) == ("decoder",)


def test_the_target_is_the_vaes_decode_of_the_latents():
    """A decoder that outputs exactly the VAE's decode has zero loss; one that outputs the decode of other latents,
    or the latents' own values upsampled, does not, and the pixel loss is the L1 distance to the VAE's decode."""
    r = recipe(feature_weight=0.5)
    vae = FakeVAE()
    x0 = torch.randn(2, 8, 3, 4, 4)
    exact = to_signed(FakeVAE()(x0))

    out = r.loss("decoder", {"vae": vae, "decoder": lambda z: exact.clone()}, x0)
    assert torch.equal(vae.seen[0], x0)  # latent_noise 0: the VAE decodes the data's latents as they are
    assert out["decoder"].item() == 0 and out["pixel"].item() == 0 and out["feature"].item() == 0

    wrong = to_signed(FakeVAE()(x0 + 0.3))
    out = r.loss("decoder", {"vae": FakeVAE(), "decoder": lambda z: wrong.clone()}, x0)
    l1 = (wrong - exact).abs().mean()
    assert out["pixel"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert out["feature"].item() > 0
    assert out["decoder"].item() == pytest.approx(l1.item() + 0.5 * out["feature"].item(), rel=1e-6)
    mse = (wrong.clamp(-1, 1) - exact).pow(2).mean()
    assert out["psnr"].item() == pytest.approx(10 * torch.log10(4 / mse).item(), rel=1e-5)


def test_latent_noise_perturbs_what_both_the_vae_and_the_decoder_see():
    r = recipe(latent_noise=0.1, feature_weight=0)
    vae, seen = FakeVAE(), []
    x0 = torch.randn(1, 8, 2, 4, 4)

    def decoder(z):
        seen.append(z)
        return to_signed(FakeVAE()(z))

    out = r.loss("decoder", {"vae": vae, "decoder": decoder}, x0, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], vae.seen[0]) and not torch.equal(seen[0], x0)
    assert 0.05 < (seen[0] - x0).std().item() < 0.15
    assert out["decoder"].item() == 0 and "feature" not in out


def test_l2_pixel_loss_and_the_feature_distance():
    r = recipe(pixel="l2", feature_weight=0)
    a, b = torch.zeros(1, 3, 5, 8, 8), torch.full((1, 3, 5, 8, 8), 0.5)
    assert r(a, b)["pixel"].item() == pytest.approx(0.25)
    feats = RandomFeatures(8)
    assert feats.distance(a, a).item() == 0
    noise = torch.randn(1, 3, 5, 8, 8)
    # a clip nearer the reference is nearer in the features too
    assert feats.distance(b, b + 0.1 * noise).item() < feats.distance(b, b + noise).item()
    with pytest.raises(ValueError, match="differ in shape"):
        r(a, b[:, :, :4])


def test_a_few_steps_against_the_tiny_teachers_vae_lower_the_loss():
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(TINY / "vae").eval()

    @torch.no_grad()
    def vae_decode(z):  # Teacher.decode's convention, without the latents' de-normalisation (not needed here)
        video = vae.decode(z, return_dict=False)[0]
        return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)

    r = recipe(feature_weight=0.1, feature_width=8)
    torch.manual_seed(0)
    decoder = r.networks()[0].make(None)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    x0 = torch.randn(2, 8, 2, 4, 4)
    target = vae_decode(x0)
    nets = {"vae": lambda z: target, "decoder": decoder}
    losses = []
    for _ in range(15):
        out = r.loss("decoder", nets, x0)
        opt.zero_grad()
        out["decoder"].backward()
        opt.step()
        losses.append(out["decoder"].item())
    assert losses[-1] < 0.6 * losses[0], losses
