"""The parts of the built-in tiny teachers: a genuine diffusers `WanPipeline` over a small word vocabulary (the toy
world's, which the caller passes in: this layer does not know the toy world).

Word-level tokenizer over the toy vocabulary, a tiny UMT5 encoder, a tiny `AutoencoderKLWan` and a tiny
`WanTransformer3DModel`. `scripts/train_tiny_teacher.py` trains the VAE and the DiT; the text encoder stays at its
seeded random initialisation (a frozen random transformer still gives every caption distinct, contextual
embeddings, and the DiT's cross-attention learns to read them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from distill.teachers.words import build_tokenizer



@dataclass
class TinyWanSpec:
    """Sizes of the tiny teacher (defaults: about 2.8 M parameters in all, 11 MB in fp32)."""

    text_dim: int = 32
    text_layers: int = 2
    text_heads: int = 4
    vae_base_dim: int = 16
    vae_z_dim: int = 8
    vae_dim_mult: tuple[int, ...] = (1, 2, 4)  # two down-sampling stages: 4x spatial compression
    vae_temporal_downsample: tuple[bool, ...] = (True, True)  # both stages halve time: 4x temporal (4k+1 frames)
    # 2x2 patches of the 16x16 latent: 320 tokens of 8x8 pixels, so a shape spans several tokens and a frame's
    # motion (4 or 8 px) is a step of one token or half of one; 4x4 patches (80 tokens, one shape per token) left
    # the DiT unable to draw one coherent moving object within the CPU budget.
    dit_patch: tuple[int, int, int] = (1, 2, 2)
    dit_heads: int = 4
    dit_head_dim: int = 32
    dit_ffn: int = 256
    dit_layers: int = 4
    flow_shift: float = 3.0
    extra_words: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def build_components(spec: TinyWanSpec, words: list[str], seed: int = 0) -> dict:
    """Fresh (untrained) components of a tiny WanPipeline over the vocabulary `words`, seeded."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(words) + list(spec.extra_words))
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=spec.text_dim, d_kv=spec.text_dim // spec.text_heads,
        d_ff=spec.text_dim * 2, num_layers=spec.text_layers, num_heads=spec.text_heads,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    z = spec.vae_z_dim
    vae = AutoencoderKLWan(base_dim=spec.vae_base_dim, z_dim=z, dim_mult=list(spec.vae_dim_mult), num_res_blocks=1,
                           temperal_downsample=list(spec.vae_temporal_downsample),
                           scale_factor_spatial=2 ** len(spec.vae_temporal_downsample),
                           scale_factor_temporal=2 ** sum(spec.vae_temporal_downsample),
                           latents_mean=[0.0] * z, latents_std=[1.0] * z)
    transformer = WanTransformer3DModel(
        patch_size=tuple(spec.dit_patch), num_attention_heads=spec.dit_heads, attention_head_dim=spec.dit_head_dim,
        in_channels=z, out_channels=z, text_dim=spec.text_dim, freq_dim=64, ffn_dim=spec.dit_ffn,
        num_layers=spec.dit_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        rope_max_seq_len=1024)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=spec.flow_shift)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "transformer": transformer,
            "scheduler": scheduler}


# Wan's image-to-video shapes (teachers/wan/i2v.py), tiny: what the parity tests build, and where an image-conditioned
# tiny teacher starts from.
I2V_SHAPES = ("wan2.1-i2v", "wan2.2-ti2v", "wan2.2-i2v-a14b")


def tiny_clip(seed: int = 0, image_size: int = 32, hidden: int = 24) -> dict:
    """A tiny seeded `CLIPVisionModel` (image_size/8 squared patches + 1 class token) and its `CLIPImageProcessor`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=image_size, patch_size=8))
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    return {"image_encoder": encoder, "image_processor": processor}


def build_i2v_pipeline(shape: str, spec: TinyWanSpec, words: list[str], seed: int = 0, pairs: bool = False):
    """A fresh tiny pipeline of one of Wan's image-to-video shapes (I2V_SHAPES), seeded: 2.1 I2V (a CLIP image
    encoder and image cross-attention; `pairs`: first-and-last-frame, FLF2V), 2.2 TI2V (a `WanPipeline` with
    expand_timesteps) or 2.2 I2V A14B (two experts, their seeds differ, boundary 0.9)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    if shape not in I2V_SHAPES:
        raise ValueError(f"unknown image-to-video shape {shape!r}; one of {list(I2V_SHAPES)}")
    parts = build_components(spec, words, seed)
    if shape == "wan2.2-ti2v":
        return WanPipeline(**parts, expand_timesteps=True)
    z, temporal = spec.vae_z_dim, 2 ** sum(spec.vae_temporal_downsample)

    def dit(seed: int, image_dim: int | None, tokens: int | None) -> WanTransformer3DModel:
        torch.manual_seed(seed)
        inner = spec.dit_heads * spec.dit_head_dim
        return WanTransformer3DModel(
            patch_size=tuple(spec.dit_patch), num_attention_heads=spec.dit_heads,
            attention_head_dim=spec.dit_head_dim, in_channels=2 * z + temporal, out_channels=z,
            text_dim=spec.text_dim, freq_dim=64, ffn_dim=spec.dit_ffn, num_layers=spec.dit_layers,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
            image_dim=image_dim, added_kv_proj_dim=None if image_dim is None else inner, pos_embed_seq_len=tokens)

    if shape == "wan2.1-i2v":
        clip = tiny_clip(seed)
        hidden, tokens = clip["image_encoder"].config.hidden_size, (32 // 8) ** 2 + 1
        parts["transformer"] = dit(seed + 100, hidden, 2 * tokens if pairs else None)
        return WanImageToVideoPipeline(**parts, **clip)
    parts["transformer"] = dit(seed + 100, None, None)
    return WanImageToVideoPipeline(**parts, transformer_2=dit(seed + 101, None, None), boundary_ratio=0.9)
