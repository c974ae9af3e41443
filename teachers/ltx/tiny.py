"""A tiny random-weight LTX-Video pipeline, built offline: for tests of the LTX plug-in's plumbing and parity, not
of quality.

Word-level tokenizer (as the Wan tiny teacher's, kept here so that the two plug-ins do not depend on each other:
`LTXPipeline` only calls the tokenizer with padding, truncation and
`batch_decode`, which a `PreTrainedTokenizerFast` serves as T5TokenizerFast does), a tiny T5 encoder, a tiny
`AutoencoderKLLTXVideo` and a tiny `LTXVideoTransformer3DModel`, with the scheduler settings LTX-Video ships.
`LTXPipeline(**build_components(TinyLTXSpec(), words)).save_pretrained(folder)` writes a folder that stock
`LTXPipeline.from_pretrained(folder)` loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXVideoTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel

from distill.teachers.words import build_tokenizer


# LTX-Video's scheduler_config.json (Lightricks/LTX-Video, 0.9.x): resolution-dependent ("dynamic") exponential
# shift between base_shift at 1024 tokens and max_shift at 4096, the grid stretched to end at 0.1.
LTX_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.95,
                 "max_shift": 2.05, "base_image_seq_len": 1024, "max_image_seq_len": 4096, "shift_terminal": 0.1,
                 "invert_sigmas": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                 "use_beta_sigmas": False}


@dataclass
class TinyLTXSpec:
    """Sizes of the tiny LTX pipeline (defaults: about 0.29 M parameters, 1.2 MB on disk in fp32).

    The VAE compresses time 8x like LTX-Video's (frames 8k+1) but space only 8x (LTX: 32x), so that a 9-frame
    32x32 clip is a 2x4x4 latent of 32 tokens instead of a single one."""

    text_dim: int = 32
    text_layers: int = 2
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # encoder blocks (the decoder mirrors them)
    vae_scaling: tuple[bool, ...] = (True, True, True, False)  # three 2x space-time stages: 8x in time and space
    vae_layers: tuple[int, ...] = (1, 1, 1, 1, 1)  # resnets per block, and in the mid block
    vae_patch: int = 1
    latent_channels: int = 8
    dit_heads: int = 2
    dit_head_dim: int = 16
    dit_layers: int = 2
    scheduler: dict = field(default_factory=lambda: dict(LTX_SCHEDULER))
    extra_words: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def build_components(spec: TinyLTXSpec, words: list[str], seed: int = 0) -> dict:
    """Fresh random components of a tiny LTXPipeline over the vocabulary `words`, seeded."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(words) + list(spec.extra_words), model_max_length=128)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=spec.text_dim, d_kv=spec.text_dim // spec.text_heads,
        d_ff=spec.text_dim * 2, num_layers=spec.text_layers, num_heads=spec.text_heads,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0))
    blocks = len(spec.vae_channels)
    vae = AutoencoderKLLTXVideo(
        latent_channels=spec.latent_channels, block_out_channels=tuple(spec.vae_channels),
        decoder_block_out_channels=tuple(spec.vae_channels), down_block_types=("LTXVideoDownBlock3D",) * blocks,
        layers_per_block=tuple(spec.vae_layers), decoder_layers_per_block=tuple(spec.vae_layers),
        spatio_temporal_scaling=tuple(spec.vae_scaling), decoder_spatio_temporal_scaling=tuple(spec.vae_scaling),
        decoder_inject_noise=(False,) * (blocks + 1), downsample_type=("conv",) * blocks,
        upsample_residual=(False,) * blocks, upsample_factor=(1,) * blocks, timestep_conditioning=False,
        patch_size=spec.vae_patch, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    # Non-trivial latent statistics, so that a decode that forgot to denormalise would be caught.
    g = torch.Generator().manual_seed(seed + 1)
    vae.latents_mean.copy_(0.1 * torch.randn(spec.latent_channels, generator=g))
    vae.latents_std.copy_(0.5 + torch.rand(spec.latent_channels, generator=g))
    inner = spec.dit_heads * spec.dit_head_dim
    transformer = LTXVideoTransformer3DModel(
        in_channels=spec.latent_channels, out_channels=spec.latent_channels, patch_size=1, patch_size_t=1,
        num_attention_heads=spec.dit_heads, attention_head_dim=spec.dit_head_dim, cross_attention_dim=inner,
        num_layers=spec.dit_layers, caption_channels=spec.text_dim)
    scheduler = FlowMatchEulerDiscreteScheduler(**spec.scheduler)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "transformer": transformer,
            "scheduler": scheduler}
