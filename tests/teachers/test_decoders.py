"""The distilled video decoder (teachers/decoders.py): the teacher VAE's frame rule and shapes for the tiny teacher's
latents, causality, streaming equal to the full decode, and a save/load round trip."""

from pathlib import Path

import pytest
import torch

from distill.teachers import registry
from distill.teachers.decoders import VideoDecoder

TINY = Path(__file__).resolve().parents[2] / "teachers" / "builtin" / "tiny-wan"


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(TINY / "vae").eval()


def tiny_decoder(**sizes) -> VideoDecoder:
    """A decoder sized from the tiny teacher's folder, as the recipe sizes one."""
    family = registry.family_of(TINY)
    f = family.video_factors(TINY)
    torch.manual_seed(0)
    return VideoDecoder(latent_channels=family.latent_channels(family.dit_config(TINY)), temporal=f.temporal,
                        spatial=f.spatial, width=16, depth=1, min_width=8, **sizes).eval()


@pytest.mark.parametrize("latent_frames", [1, 2, 3])
@torch.no_grad()
def test_decoder_gives_the_vaes_frames_and_size(tiny_vae, latent_frames):
    decoder = tiny_decoder()
    z = torch.randn(1, tiny_vae.config.z_dim, latent_frames, 4, 6)
    vae_video = tiny_vae.decode(z, return_dict=False)[0]  # [B, 3, T, H, W]
    ours = decoder(z)
    assert ours.shape == vae_video.shape
    assert decoder.frames(latent_frames) == vae_video.shape[2]
    clip = decoder.decode(z)
    assert clip.dtype == torch.uint8 and clip.shape == (1, vae_video.shape[2], *vae_video.shape[3:], 3)


@torch.no_grad()
def test_frames_depend_only_on_latent_frames_up_to_their_own():
    decoder = tiny_decoder()
    z = torch.randn(1, 8, 4, 4, 4)
    changed = z.clone()
    changed[:, :, 2] += 1.0  # latent frame 2 stands for frames 5..8
    diff = (decoder(z) - decoder(changed)).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(diff[:5] == 0) and torch.all(diff[5:] > 0)


@torch.no_grad()
def test_streaming_equals_the_full_decode():
    decoder = tiny_decoder()
    z = torch.randn(2, 8, 5, 4, 4)
    full = decoder(z)
    pieces = list(decoder.stream(z))
    assert [p.shape[2] for p in pieces] == [1, 4, 4, 4, 4]
    assert (torch.cat(pieces, dim=2) - full).abs().max() <= 1e-5
    # latents arriving in uneven chunks (as a sampler hands them on) give the same frames
    chunked = torch.cat(list(decoder.stream(iter([z[:, :, :2], z[:, :, 2:]]))), dim=2)
    assert (chunked - full).abs().max() <= 1e-5
    frames = torch.cat(list(decoder.decode_stream(z)), dim=1)
    assert frames.shape == decoder.decode(z).shape
    assert (frames.int() - decoder.decode(z).int()).abs().max() <= 1  # rounding of values within 1e-5 of a half


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path):
    decoder = tiny_decoder()
    decoder.save_pretrained(tmp_path / "decoder")
    assert (tmp_path / "decoder" / "config.json").is_file()
    assert (tmp_path / "decoder" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = VideoDecoder.from_pretrained(tmp_path / "decoder")
    sizes = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert sizes(loaded.config) == sizes(decoder.config)
    z = torch.randn(1, 8, 2, 4, 4)
    assert torch.equal(loaded(z), decoder(z))


def test_bad_sizes_are_refused_naming_them():
    with pytest.raises(ValueError, match="spatial=6 must be a power of 2"):
        VideoDecoder(latent_channels=8, temporal=4, spatial=6)
    with pytest.raises(ValueError, match=r"latents of shape \(1, 4, 2, 4, 4\); expected \[B, 8"):
        tiny_decoder()(torch.randn(1, 4, 2, 4, 4))
