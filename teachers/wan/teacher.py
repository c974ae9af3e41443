"""The loaded Wan 2.1 / 2.2 teacher: `WanTransformer3DModel` (and, for Wan 2.2 A14B, its low-noise expert
`transformer_2`), `AutoencoderKLWan`, the pipeline's UMT5 text encoder and tokenizer, and for image-to-video
checkpoints their image conditioning (teachers/wan/i2v.py; a CLIP image encoder for Wan 2.1 I2V)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from diffusers.utils.torch_utils import randn_tensor

from distill.teachers import samplers
from distill.teachers.base import DTYPES, Cond, image_list, pick_device, prompt_list, seed_list  # noqa: F401
from distill.teachers.parallel import check_sequence_split, token_count
from distill.teachers.resolve import check_weight_files, resolve
from distill.teachers.schedule import NUM_TRAIN_TIMESTEPS
from distill.teachers.wan import i2v
from distill.teachers.wan.experts import WanExperts



def video_factors(folder: Path) -> tuple[int, int, tuple[int, ...]]:
    """(temporal VAE factor, spatial VAE factor, DiT patch size) read from a checkpoint's configs, no weights."""
    vae = json.loads((folder / "vae" / "config.json").read_text())
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    return (vae.get("scale_factor_temporal") or 4, vae.get("scale_factor_spatial") or 8,
            tuple(transformer.get("patch_size", (1, 2, 2))))


def check_video_size(frames: int, height: int, width: int, temporal: int, spatial: int, patch) -> None:
    """Refuse a clip size the Wan VAE and DiT cannot take, naming the value and what would be accepted."""
    if frames < 1 or (frames - 1) % temporal:
        lo = (max(frames, 1) - 1) // temporal * temporal + 1
        raise ValueError(f"frames={frames} is not {temporal}k+1 (the Wan VAE compresses time {temporal}x); "
                         f"use for example {lo} or {lo + temporal}")
    for name, value, p in (("height", height, patch[1]), ("width", width, patch[2])):
        m = spatial * p
        if value <= 0 or value % m:
            raise ValueError(f"{name}={value} is not divisible by {m} (VAE factor {spatial} x patch {p}); "
                             f"use for example {max(m, value // m * m)} or {(value // m + 1) * m}")


def check_folder_split(folder: Path, frames: int, height: int, width: int, n: int, where: str = "") -> None:
    """Refuse, from a Wan folder's configs alone (no weights), a sequence-parallel degree `n` that its DiT's heads or
    this clip's tokens do not divide (ValueError naming the value, as `check_sequence_split`)."""
    temporal, spatial, patch = video_factors(folder)
    latent = ((frames - 1) // temporal + 1, height // spatial, width // spatial)
    heads = json.loads((Path(folder) / "transformer" / "config.json").read_text())["num_attention_heads"]
    check_sequence_split(heads, token_count(latent, patch), n, where)


class PromptWarning(UserWarning):
    """A prompt the text encoder does not read whole: cut at its maximum length, or with words it does not know."""


def prompt_problems(tokenizer, text: str, max_length: int) -> list[str]:
    """What the text encoder will not see of `text`: the tokens cut beyond `max_length` (the pipeline truncates
    silently) and the words its tokenizer maps to the unknown token."""
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False, return_offsets_mapping=fast)
    ids = list(enc["input_ids"])
    shown = text if len(text) <= 60 else text[:57] + "..."
    problems = []
    if len(ids) > max_length:
        problems.append(f"prompt {shown!r} is {len(ids)} tokens long but the text encoder reads {max_length}: "
                        f"{len(ids) - max_length} tokens were cut")
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        if fast:
            words = list(dict.fromkeys(text[a:b] for i, (a, b) in zip(ids, enc["offset_mapping"]) if i == unk))
            what = f"the words {words}"
        else:
            what = f"{ids.count(unk)} token(s)"
        problems.append(f"prompt {shown!r}: the tokenizer does not know {what}; the text encoder reads "
                        f"{tokenizer.unk_token} in their place")
    return problems


def _twice(cond: Cond) -> Cond | None:
    """A Cond's image fields for a batch of both CFG halves (the text fields are not read from it)."""
    if not cond.has_image:
        return None
    embeds = None if cond.image_embeds is None else torch.cat([cond.image_embeds, cond.image_embeds])
    return Cond(cond.prompt_embeds, None, torch.cat([cond.image_latents, cond.image_latents]), embeds)


def _param_dtype(model) -> torch.dtype:
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the DiT
    return next(module.parameters()).dtype


class WanTeacher:
    """A 50-step flow-matching spacetime DiT teacher loaded from a diffusers Wan folder."""

    def __init__(self, pipe: WanPipeline, folder: Path, device: torch.device, max_sequence_length: int = 512,
                 guidance_2: float | None = None):
        from distill.teachers.registry import family

        self.family = family("wan")
        self.pipe = pipe
        self.folder = folder
        self.device = device
        self.max_sequence_length = max_sequence_length
        self._checked_prompts: set[str] = set()  # each prompt's PromptWarning is given once
        self.transformer = pipe.transformer
        self.transformer_2 = getattr(pipe, "transformer_2", None)
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype  # the DiT's compute dtype; text embeddings are cast to it
        self.scheduler_config = dict(pipe.scheduler.config)
        boundary = pipe.config.get("boundary_ratio")
        self.boundary_t = None if boundary is None or self.transformer_2 is None else float(boundary)
        # The velocity network the engine copies, partitions and runs: one DiT, or the two experts behind their
        # router (the low-noise expert's guidance `guidance_2`, as the stock pipeline's `guidance_scale_2`).
        self.dit = self.transformer if self.boundary_t is None else \
            WanExperts(self.transformer, self.transformer_2, self.boundary_t)
        self.guidance_2 = guidance_2
        self.expand_timesteps = bool(pipe.config.get("expand_timesteps", False))
        # Image conditioning (i2v.py): what the checkpoint takes, and the CLIP encoder of a DiT that reads image tokens.
        index = {"_class_name": type(pipe).__name__, **dict(pipe.config)}
        dit_config = dict(self.transformer.config)
        self.image_input = i2v.image_input(index)
        self.takes_last_image = i2v.takes_last_image(index, dit_config)
        self.image_encoder = getattr(pipe, "image_encoder", None) if i2v.reads_image_tokens(dit_config) else None
        self._image_pairs = dit_config.get("pos_embed_seq_len") is not None  # FLF2V: first and last image tokens
        self.vae_scale_temporal = pipe.vae_scale_factor_temporal
        self.vae_scale_spatial = pipe.vae_scale_factor_spatial
        self.patch_size = tuple(self.transformer.config.patch_size)
        z = self.vae.config.z_dim
        self._latents_mean = torch.tensor(self.vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self._latents_std = torch.tensor(self.vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        # On CPU, oneDNN runs the VAE's 3-D convolutions (and its RMS norms over channels) 1.4-2x faster with weights
        # and activations in channels-last layout (7 clips of 17x64x64 on one thread: decode 2.1 -> 1.5 s, encode
        # 0.97 -> 0.45 s; decoded uint8 clips equal but for 2e-5 of pixels, by one level). The weights stay
        # strided that way: `.contiguous()` them before saving this VAE with safetensors.
        self._vae_layout = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
        for module in self.vae.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=self._vae_layout)

    @classmethod
    def from_pretrained(cls, source: str, dtype: str = "float32", device: str = "auto", revision: str | None = None,
                        max_sequence_length: int = 512, guidance_2: float | None = None) -> "WanTeacher":
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
        return cls.load(resolve(source, revision), DTYPES[dtype], pick_device(device), max_sequence_length,
                        guidance_2)

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype, dev: torch.device, max_sequence_length: int = 512,
             guidance_2: float | None = None) -> "WanTeacher":
        check_weight_files(folder)  # a truncated download fails here, naming its file
        i2v.check_text_length(json.loads((folder / "transformer" / "config.json").read_text()), max_sequence_length,
                              folder)
        image_to_video = json.loads((folder / "model_index.json").read_text()).get("_class_name") == i2v.I2V_PIPELINE
        pipeline = WanImageToVideoPipeline if image_to_video else WanPipeline
        # The VAE stays in fp32: it is small next to the DiT, and fp32 keeps decoded colours exact.
        pipe = pipeline.from_pretrained(folder, dtype={"default": dtype, "vae": torch.float32})
        pipe.to(dev)
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.transformer, getattr(pipe, "transformer_2", None), pipe.vae, pipe.text_encoder,
                       getattr(pipe, "image_encoder", None)):
            if module is not None:
                module.eval().requires_grad_(False)
        return cls(pipe, folder, dev, max_sequence_length, guidance_2)

    # --- sequence parallelism ----------------------------------------------------------------------------------
    def shard_sequence(self, group) -> "WanTeacher":
        """Spread each clip's tokens over the ranks of `group` (a torch.distributed group) in every DiT forward
        (DeepSpeed-Ulysses, distill.teachers.parallel): every rank of the group must then call `sample` or
        `velocity` with the same prompts and seeds, and every rank gets the whole result."""
        from distill.teachers.parallel import shard_sequence

        if self.dit is not None:
            shard_sequence(getattr(self.dit, "module", self.dit), group)
        return self

    def unshard_sequence(self) -> "WanTeacher":
        from distill.teachers.parallel import unshard_sequence

        if self.dit is not None:
            unshard_sequence(getattr(self.dit, "module", self.dit))
        return self

    # --- shapes -------------------------------------------------------------------------------------------------
    def check_video_size(self, frames: int, height: int, width: int) -> None:
        check_video_size(frames, height, width, self.vae_scale_temporal, self.vae_scale_spatial, self.patch_size)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self.check_video_size(frames, height, width)
        return (self.vae.config.z_dim, (frames - 1) // self.vae_scale_temporal + 1,
                height // self.vae_scale_spatial, width // self.vae_scale_spatial)

    # --- text ---------------------------------------------------------------------------------------------------
    def check_prompts(self, texts: list[str]) -> None:
        """Warn (PromptWarning, once per prompt) about what the text encoder will not read of a prompt."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is None:
            return
        for text in dict.fromkeys(texts):
            if not isinstance(text, str) or not text.strip() or text in self._checked_prompts:
                continue
            self._checked_prompts.add(text)
            for problem in prompt_problems(tokenizer, text, self.max_sequence_length):
                warnings.warn(problem, PromptWarning, stacklevel=3)

    @torch.no_grad()
    def encode(self, prompts: list[str], negative: str | list[str] | None = "", images=None, last_images=None,
               size: tuple[int, int, int] | None = None) -> Cond:
        """UMT5 embeddings of the prompts and, unless `negative` is None, of the negative prompt(s); with `images`
        (one per prompt or one for all; and `last_images`), their conditioning for clips of `size` (frames,
        height, width), as `encode_images`."""
        prompts = prompt_list(prompts)
        self.check_image_input(images, last_images)  # before any text or image is read
        self.check_prompts([*prompts, *([negative] if isinstance(negative, str) else negative or [])])
        pos, neg = self.pipe.encode_prompt(
            prompt=prompts, negative_prompt=negative, do_classifier_free_guidance=negative is not None,
            max_sequence_length=self.max_sequence_length, device=self.device)
        cond = Cond(pos.to(self.dtype), None if neg is None else neg.to(self.dtype))
        if images is None and last_images is None:
            return cond
        return cond.with_image(*self.encode_images(image_list(images, len(prompts)), size,
                                                   image_list(last_images, len(prompts), "last image")))

    def check_image_input(self, images, last_images) -> None:
        """Refuse an image this checkpoint does not take, naming the folder and its pipeline class."""
        what = f"teacher {str(self.folder)!r} ({type(self.pipe).__name__})"
        if images is None and last_images is not None:
            raise ValueError(f"{what}: a last image was given without a first image")
        if images is not None and self.image_input == "none":
            raise ValueError(f"{what} is a text-to-video checkpoint; it takes no image")
        if last_images is not None and not self.takes_last_image:
            raise ValueError(f"{what} takes a first image only, not a last image (its stock pipeline "
                             f"{'drops it' if self.expand_timesteps else 'has no image-pair DiT for it'})")

    @torch.no_grad()
    def encode_images(self, images, size: tuple[int, int, int] | None, last_images=None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image_latents, image_embeds) of `Cond` for clips of `size` (frames, height, width): each image is resized
        to the clip by the pipeline's video processor and encoded by the VAE (the condition video of
        `WanImageToVideoPipeline.prepare_latents`), and read by the CLIP encoder where the DiT attends to it."""
        self.check_image_input(images, last_images)  # before any file is read
        if images is None:
            raise ValueError("encode_images: no images given")
        n = len(images) if isinstance(images, (list, tuple)) else 1
        images, last_images = image_list(images, n), image_list(last_images, n, "last image")
        if size is None:
            raise ValueError("image conditioning depends on the clip size: pass size=(frames, height, width)")
        frames, height, width = size
        self.check_video_size(frames, height, width)
        if last_images is not None and frames < 2:
            raise ValueError(f"a last image needs a clip of at least 2 frames, got frames={frames}")
        pixels = lambda imgs: self.pipe.video_processor.preprocess(imgs, height=height, width=width).to(  # noqa
            self.device, dtype=torch.float32)
        video = i2v.condition_video(pixels(images), None if last_images is None else pixels(last_images), frames,
                                    self.expand_timesteps)
        encoded = self._vae_mode(video)
        latents = i2v.condition_latents(encoded, frames, self.vae_scale_temporal, self.expand_timesteps,
                                        last_images is not None)
        embeds = None
        if self.image_encoder is not None:
            embeds = i2v.image_tokens(self.image_encoder, self.pipe.image_processor, images, last_images,
                                      self.device).to(self.dtype)
        return latents, embeds

    def _vae_mode(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised VAE posterior mode of a [-1, 1] video [B, 3, T, H, W], computed as the stock I2V pipeline's
        `prepare_latents` does (its `sample_mode="argmax"`, then `(z - mean) * (1 / std)`)."""
        x = video.to(self.vae.dtype).contiguous(memory_format=self._vae_layout)
        z = self.vae.encode(x).latent_dist.mode().to(torch.float32)
        return (z - self._latents_mean.to(z.device)) * (1.0 / self._latents_std.to(z.device))

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """UMT5 embeddings [B, L, D] of any texts, the empty negative prompt included (zero-padded to L)."""
        self.check_prompts(list(texts))
        pos, _ = self.pipe.encode_prompt(prompt=list(texts), do_classifier_free_guidance=False,
                                         max_sequence_length=self.max_sequence_length, device=self.device)
        return pos.to(self.dtype)

    # --- the velocity field -------------------------------------------------------------------------------------
    def forward(self, model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, image: Cond | None = None
                ) -> torch.Tensor:
        """One DiT forward at noise levels t ∈ [0, 1] ([B], float64). `model` is this teacher's DiT or any network
        of the same shape (a student, its EMA copy, or a DeepSpeed engine around one); `image` a Cond whose image
        fields (one row per row of x) the forward reads."""
        return self.forward_all(model, x, t, embeds, image)[0]

    def forward_all(self, model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, image: Cond | None = None,
                    **kwargs) -> tuple:
        """`forward`, returning every output of the network (a headed critic gives velocity and logits), with
        `kwargs` passed on to it."""
        dtype = _param_dtype(model)
        has_image = image is not None and image.has_image
        if self.image_input == "required" and not has_image:
            raise ValueError(f"teacher {str(self.folder)!r} ({type(self.pipe).__name__}) is an image-to-video "
                             f"checkpoint: its DiT needs the image conditioning (encode with images=...)")
        hidden = x
        if has_image:
            hidden = i2v.dit_input(x, image.image_latents, self.expand_timesteps)
            if image.image_embeds is not None:
                kwargs["encoder_hidden_states_image"] = i2v.dit_image_tokens(image.image_embeds,
                                                                             self._image_pairs).to(dtype)
        return model(hidden_states=hidden.to(dtype), timestep=self._timestep(t, x, first_frame_clean=has_image),
                     encoder_hidden_states=embeds.to(dtype), return_dict=False, **kwargs)

    def _timestep(self, t: torch.Tensor, x: torch.Tensor, first_frame_clean: bool = False) -> torch.Tensor:
        """The DiT's timestep input: t·1000 in float32 (as the stock pipeline's scheduler gives it); per token for
        Wan 2.2 TI2V (expand_timesteps), the first latent frame's tokens at 0 when it holds the clean image."""
        timestep = (t.to(torch.float64) * NUM_TRAIN_TIMESTEPS).to(torch.float32)
        if self.expand_timesteps and first_frame_clean:
            return i2v.first_frame_clean(timestep, x, self.patch_size)
        if self.expand_timesteps:  # Wan 2.2 TI2V: one timestep per latent patch
            p_t, p_h, p_w = self.patch_size
            n = (x.shape[2] // p_t) * (x.shape[3] // p_h) * (x.shape[4] // p_w)
            timestep = timestep[:, None].expand(-1, n)
        return timestep

    def guided(self, model, x, t, cond: Cond, guidance: float, guidance_2: float | None = None) -> torch.Tensor:
        """`model`'s velocity with classifier-free guidance when guidance > 1, both halves in one forward. With two
        experts, the low-noise expert's samples take `guidance_2` (None: `guidance`), as the stock pipeline's
        `guidance_scale_2`; guidance is on or off for both by `guidance`, as there. Guidance is over text: both
        halves read the image, as in the stock I2V pipelines."""
        if not (guidance > 1.0 and cond.negative_embeds is not None):
            return self.forward(model, x, t, cond.prompt_embeds, cond)
        both = self.forward(model, torch.cat([x, x]), torch.cat([t, t]),
                            torch.cat([cond.prompt_embeds, cond.negative_embeds]), _twice(cond))
        v_cond, v_uncond = both.chunk(2)
        scale = guidance
        module = getattr(model, "module", model)
        if guidance_2 is not None and isinstance(module, WanExperts):
            high = module.is_high(self._timestep(t, x))
            scale = torch.where(high, guidance, guidance_2).to(v_cond.dtype).view(-1, *([1] * (x.dim() - 1)))
        return v_uncond + scale * (v_cond - v_uncond)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: Cond, guidance: float = 1.0,
                 guidance_2: float | None = None) -> torch.Tensor:
        """v(x_t, t, text) with classifier-free guidance when guidance > 1; t ∈ [0, 1], scalar or per sample. With
        two experts each sample goes to its expert (WanExperts), the low-noise ones guided by `guidance_2` (None:
        this teacher's own `guidance_2`, else `guidance`)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        g2 = guidance_2 if guidance_2 is not None else self.guidance_2
        return self.guided(self.dit, x_t, t, cond, guidance, g2)

    def drop_text_encoder(self) -> None:
        self.pipe.text_encoder = None

    def drop_dit(self) -> None:
        self.dit = self.transformer = self.transformer_2 = None
        self.pipe.transformer = None
        if hasattr(self.pipe, "transformer_2"):
            self.pipe.transformer_2 = None

    # --- sampling -----------------------------------------------------------------------------------------------
    def noise(self, n: int, frames: int, height: int, width: int, seed: int | list[int]) -> torch.Tensor:
        """Initial noise, one generator per clip: clip i's noise depends only on its own seed."""
        gens = [torch.Generator(self.device).manual_seed(s) for s in seed_list(seed, n)]
        shape = (n, *self.latent_shape(frames, height, width))
        return randn_tensor(shape, generator=gens, device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int = 50, guidance: float = 5.0, shift: float = 3.0,
               seed: int | list[int] = 0, sampler: str = "unipc", negative: str = "", frames: int = 81,
               height: int = 480, width: int = 832, progress: bool = False, cond: Cond | None = None,
               guidance_2: float | None = None, grid=None, images=None, last_images=None) -> torch.Tensor:
        """`grid`: the consistency sampler's levels (samplers.student_levels; None: the legacy "euler" grid).
        `images` (and `last_images`): the first (and last) frame of each clip, one per prompt or one for all, as
        `WanImageToVideoPipeline` takes them; or give them encoded in `cond`."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        size = (frames, height, width)
        if cond is None:
            cond = self.encode(prompts, negative if guidance > 1.0 else None, images, last_images, size)
        elif images is not None or last_images is not None:
            if cond.has_image:
                raise ValueError("images given twice: in `cond` (image_latents) and as `images`; give one")
            self.check_image_input(images, last_images)
            cond = cond.with_image(*self.encode_images(
                image_list(images, len(prompts)), size, image_list(last_images, len(prompts), "last image")))
        self._check_image_cond(cond, size)
        gens = [torch.Generator(self.device).manual_seed(s) for s in seed_list(seed, len(prompts))]
        x = randn_tensor((len(prompts), *self.latent_shape(frames, height, width)), generator=gens,
                         device=self.device, dtype=torch.float32)
        # Stochastic samplers draw their fresh noise from the same per-clip generators, after the initial noise.
        noise = lambda like: randn_tensor(like.shape, generator=gens, device=self.device, dtype=like.dtype)  # noqa
        model = lambda x_t, t: self.velocity(x_t, t, cond, guidance, guidance_2)  # noqa: E731
        x = samplers.sample(sampler, model, x, steps, shift, self.scheduler_config, progress, noise, grid)
        return self.keep_image_frames(x, cond)  # TI2V: the clip's first latent frame is the image's

    def image_frames(self, x: torch.Tensor, image: Cond | None) -> torch.Tensor | None:
        """TI2V (expand_timesteps) with an image: the first latent frame is the image's, clean; else None."""
        if not (self.expand_timesteps and image is not None and image.has_image):
            return None
        given = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
        given[0] = True
        return given

    def keep_image_frames(self, x: torch.Tensor, image: Cond | None) -> torch.Tensor:
        if self.image_frames(x, image) is None:
            return x
        return i2v.keep_first_frame(x, image.image_latents)

    def _check_image_cond(self, cond: Cond, size: tuple[int, int, int]) -> None:
        """Refuse sampling an image-to-video checkpoint without an image, or with image latents of another clip
        size, naming the folder."""
        what = f"teacher {str(self.folder)!r} ({type(self.pipe).__name__})"
        if not cond.has_image:
            if self.image_input == "required":
                raise ValueError(f"{what} is an image-to-video checkpoint: give the first frame (images=...)")
            return
        if self.image_input == "none":
            raise ValueError(f"{what} is a text-to-video checkpoint; it takes no image")
        grid = self.latent_shape(*size)[1:]
        have = tuple(cond.image_latents.shape[-3:])
        want = (1, *grid[1:]) if self.expand_timesteps else grid
        if have != want:
            raise ValueError(f"the image conditioning is for a latent grid {have}, not this clip's {want} "
                             f"(frames, height, width {size}): encode the images for this size")

    # --- pixels -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents to uint8 video [B, T, H, W, 3]."""
        z = latents.to(self.device, torch.float32) * self._latents_std.to(self.device) + self._latents_mean.to(self.device)
        z = z.to(self.vae.dtype).contiguous(memory_format=self._vae_layout)
        video = self.vae.decode(z, return_dict=False)[0]  # [B, 3, T, H, W] in [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """uint8 video [B, T, H, W, 3] to normalised latents (the VAE posterior's mean unless `sample`)."""
        x = video.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        dist = self.vae.encode(x.to(self.vae.dtype).contiguous(memory_format=self._vae_layout)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return (z.float() - self._latents_mean.to(self.device)) / self._latents_std.to(self.device)
