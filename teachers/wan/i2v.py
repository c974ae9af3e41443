"""Wan image-to-video: the three shapes diffusers' `WanImageToVideoPipeline` serves, as the teacher takes them.

    Wan 2.1 I2V       one DiT reading [noisy latents, frame mask, encoded condition video] concatenated on channels
                      (in_channels = 2 z + the VAE's temporal factor), and a CLIP image encoder whose penultimate
                      hidden states it reads through its image cross-attention (`image_dim`, `added_kv_proj_dim`).
                      The condition video is the first image then black frames (and the last image at the end for
                      first-and-last-frame checkpoints, whose DiT has `pos_embed_seq_len`)
    Wan 2.2 TI2V-5B   `expand_timesteps`: the clean latent of the first image replaces latent frame 0 in every DiT
                      input and in the result, and that frame's tokens get timestep 0 (one timestep per token); no
                      image encoder, in_channels = z. Its folder is a `WanPipeline` that also samples text-to-video
    Wan 2.2 I2V A14B  two experts (transformer, transformer_2) switching at `boundary_ratio`, each reading the
                      channel-concatenated condition of 2.1 I2V; no image encoder

Each function follows the lines of `WanImageToVideoPipeline` (diffusers 0.42: `prepare_latents`, `encode_image`,
the denoising loop) it is named after, so that the teacher's clip is the stock pipeline's for the same checkpoint,
prompt, image, seed and scheduler (tests/teachers/test_wan_i2v.py). Guidance is over text only: the unconditional
forward keeps the image, as there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.teachers.base import FamilyError, read_json

I2V_PIPELINE = "WanImageToVideoPipeline"
# The text length the image cross-attention assumes: diffusers' WanAttnProcessor splits the image tokens off the
# front of the context as `context length - 512` (hard-coded), so an image-attending DiT needs 512 text tokens.
IMAGE_ATTENTION_TEXT_TOKENS = 512
IMAGE_ENCODERS = ("CLIPVisionModel", "CLIPVisionModelWithProjection")


# --- a folder's configs ---------------------------------------------------------------------------------------------
def image_input(index: dict) -> str:
    """"required" for an image-to-video folder, "optional" for a TI2V `WanPipeline` folder (expand_timesteps: the
    same weights sample from text alone or from text and an image), else "none"."""
    if index.get("_class_name") == I2V_PIPELINE:
        return "required"
    return "optional" if index.get("expand_timesteps") else "none"


def takes_last_image(index: dict, dit_config: dict) -> bool:
    """A last frame is read by the channel-concatenated condition (2.2 A14B I2V), and by a CLIP-reading DiT only when
    it was trained on image pairs (FLF2V: `pos_embed_seq_len`); TI2V's stock pipeline would drop it."""
    if image_input(index) == "none" or index.get("expand_timesteps"):
        return False
    return dit_config.get("image_dim") is None or dit_config.get("pos_embed_seq_len") is not None


def reads_image_tokens(dit_config: dict) -> bool:
    return dit_config.get("image_dim") is not None


def check_folder(folder: Path, name: str, index: dict, experts: tuple[str, ...]) -> None:
    """Refuse an image-to-video folder whose parts do not fit together, naming the file: a CLIP-reading DiT without
    an image encoder, an image encoder of another class, or a DiT whose input channels are not those of its
    conditioning."""
    mode = image_input(index)
    if mode == "none":
        return
    vae = read_json(folder / "vae" / "config.json")
    z, temporal = int(vae.get("z_dim", 16)), int(vae.get("scale_factor_temporal") or 4)
    expand = bool(index.get("expand_timesteps"))
    for expert in experts:
        config_file = folder / expert / "config.json"
        dit = read_json(config_file)
        out = dit.get("out_channels") or dit.get("in_channels")
        want = z if expand else out + temporal + z
        if mode == "required" and dit.get("in_channels") != want:
            how = "TI2V (expand_timesteps) takes the latents alone" if expand else \
                f"noisy latents ({out}) + frame mask ({temporal}) + condition latents ({z})"
            raise FamilyError(f"teacher {name!r}: {str(config_file)!r} has in_channels {dit.get('in_channels')}; "
                              f"an image-to-video DiT over this VAE takes {want}: {how}")
        if reads_image_tokens(dit):
            for component, allowed in (("image_encoder", IMAGE_ENCODERS), ("image_processor", ("CLIPImageProcessor",))):
                entry = index.get(component)
                if not (isinstance(entry, list) and len(entry) == 2 and entry[1] is not None):
                    raise FamilyError(f"teacher {name!r}: {str(config_file)!r} reads image tokens (image_dim "
                                      f"{dit['image_dim']}) but {folder / 'model_index.json'} has no {component}")
                if entry[1] not in allowed:
                    raise FamilyError(f"teacher {name!r}: {folder / 'model_index.json'} names {entry!r} for "
                                      f"{component!r}; the Wan family loads {' or '.join(allowed)} there")
                if not (folder / component).is_dir():
                    raise FamilyError(f"teacher {name!r}: {str(folder)!r} lacks the component folder {component!r}")


def check_text_length(dit_config: dict, max_sequence_length: int, folder: Path) -> None:
    if reads_image_tokens(dit_config) and max_sequence_length != IMAGE_ATTENTION_TEXT_TOKENS:
        raise FamilyError(f"teacher {str(folder)!r}: its DiT reads image tokens, and diffusers' Wan attention finds "
                          f"them as everything before the last {IMAGE_ATTENTION_TEXT_TOKENS} context tokens; set "
                          f"max_sequence_length: {IMAGE_ATTENTION_TEXT_TOKENS} (it is {max_sequence_length})")


# --- the conditioning -----------------------------------------------------------------------------------------------
def condition_video(first: torch.Tensor, last: torch.Tensor | None, frames: int, expand: bool) -> torch.Tensor:
    """`prepare_latents`' video_condition [B, 3, F, H, W] from preprocessed images [B, 3, H, W]: the first image
    alone (TI2V), else the first image, black frames, and the last image when given."""
    first = first.unsqueeze(2)
    if expand:
        return first
    b, c, _, h, w = first.shape
    if last is None:
        return torch.cat([first, first.new_zeros(b, c, frames - 1, h, w)], dim=2)
    return torch.cat([first, first.new_zeros(b, c, frames - 2, h, w), last.unsqueeze(2)], dim=2)


def frame_mask(batch: int, frames: int, latent_hw: tuple[int, int], temporal: int, last: bool) -> torch.Tensor:
    """`prepare_latents`' mask [B, temporal, F', h, w]: 1 on the pixel frames given (the first, and the last), the
    first repeated `temporal` times so that each latent frame holds `temporal` pixel frames' entries."""
    h, w = latent_hw
    mask = torch.ones(batch, 1, frames, h, w)
    mask[:, :, list(range(1, frames - 1 if last else frames))] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=temporal)
    mask = torch.concat([first, mask[:, :, 1:, :]], dim=2)
    return mask.view(batch, -1, temporal, h, w).transpose(1, 2)


def condition_latents(encoded: torch.Tensor, frames: int, temporal: int, expand: bool, last: bool) -> torch.Tensor:
    """What `Cond.image_latents` holds, from the normalised latents of the condition video: the clean first-frame
    latent [B, z, 1, h, w] (TI2V), else [frame mask, latents] on channels."""
    if expand:
        return encoded
    mask = frame_mask(encoded.shape[0], frames, tuple(encoded.shape[-2:]), temporal, last)
    return torch.concat([mask.to(encoded), encoded], dim=1)


@torch.no_grad()
def image_tokens(image_encoder, image_processor, first: list, last: list | None, device) -> torch.Tensor:
    """`encode_image`: the CLIP encoder's penultimate hidden states [B, N, D] of each first image, or [B, 2N, D] of
    each (first, last) pair, the pair's tokens one after the other."""
    images = first if last is None else [img for pair in zip(first, last) for img in pair]
    pixels = image_processor(images=images, return_tensors="pt").to(next(image_encoder.parameters()).device)
    hidden = image_encoder(**pixels, output_hidden_states=True).hidden_states[-2].to(device)
    return hidden.reshape(len(first), -1, hidden.shape[-1])


# --- the DiT's inputs -----------------------------------------------------------------------------------------------
def dit_input(x: torch.Tensor, image_latents: torch.Tensor, expand: bool) -> torch.Tensor:
    """The DiT's hidden states: the noisy latents with the clean first-frame latent in frame 0 (TI2V: the stock
    loop's `(1 - mask) * condition + mask * latents`), else [latents, condition] on channels."""
    if expand:
        return keep_first_frame(x, image_latents)
    return torch.cat([x, image_latents.to(x)], dim=1)


def keep_first_frame(x: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[:, :, :1] = image_latents.to(x)
    return out


def dit_image_tokens(image_embeds: torch.Tensor, pairs: bool) -> torch.Tensor:
    """`encoder_hidden_states_image` as the DiT takes it: [B, N, D], or for a first-and-last-frame DiT the pairs as
    2B rows of N (its image embedder views them back into [B, 2N, D])."""
    if not pairs:
        return image_embeds
    return image_embeds.reshape(-1, image_embeds.shape[1] // 2, image_embeds.shape[2])


def first_frame_clean(timestep: torch.Tensor, x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """Per-token timesteps [B, tokens] with the first latent frame's tokens at 0 (they are clean), as TI2V's stock
    loop builds them from its first-frame mask."""
    p_t, p_h, p_w = patch
    f, h, w = x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w
    mask = torch.ones(f, h, w, dtype=timestep.dtype, device=timestep.device)
    mask[0] = 0
    return mask.flatten()[None] * timestep[:, None]
