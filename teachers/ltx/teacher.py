"""The loaded LTX-Video text-to-video teacher: `LTXVideoTransformer3DModel`, `AutoencoderKLLTXVideo`, and the
pipeline's T5 text encoder and tokenizer, driven exactly as stock `LTXPipeline` drives them.

Three things differ from Wan and are hidden here, so that the engine sees the project's conventions only:
- latents: the project keeps x UNPACKED, [B, C, F, H, W]; LTX's DiT reads tokens [B, F·H·W, C]. `forward_all`
  packs before the DiT and unpacks after, in the pipeline's token order (`_pack_latents`).
- the text mask: LTX's cross-attention needs `encoder_attention_mask` (padding is biased by -10000, not cut). The
  engine carries only embeddings [B, L, D], so `embed` zeroes the padding rows and `forward_all` rebuilds the mask
  as "rows that are not all zero". A T5 output row of a real token is never exactly zero (it leaves an RMS norm
  with non-zero weights), and the masked rows get weight exp(-10000) = 0 in the softmax whatever they hold, so the
  DiT sees what the stock pipeline's mask gives it. Cached embeddings stay self-describing: no side tensor to lose.
- the schedule: the stock pipeline's 50-step grid is sigmas = linspace(1, 1/N, N) shifted by `mu`, a function of
  the clip's token count (resolution-dependent shift), then stretched to end at `shift_terminal`. `schedule`
  computes it with the folder's own scheduler, so `sample(sampler="euler")` visits exactly the stock timesteps.

The DiT predicts the flow velocity v = noise - x0 at t = sigma (its scheduler steps x + (sigma' - sigma)·v), which
is the project's convention; its timestep input is t·1000, as Wan's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift
from diffusers.utils.torch_utils import randn_tensor
from distill.teachers import samplers
from distill.teachers.base import DTYPES, Cond, pick_device, prompt_list, refuse_images, seed_list
from distill.teachers.resolve import check_weight_files, resolve
from distill.teachers.schedule import NUM_TRAIN_TIMESTEPS

DEFAULT_FRAME_RATE = 25  # LTXPipeline.__call__'s default: it sets the DiT's temporal RoPE scale
STOCK_SPATIAL_MULTIPLE = 32  # LTXPipeline.check_inputs refuses heights and widths that 32 does not divide
SAMPLERS = ("euler", "consistency")


def video_factors(folder: Path) -> tuple[int, int, tuple[int, int, int]]:
    """(temporal VAE factor, spatial VAE factor, DiT patch (t, h, w)) from a checkpoint's configs, no weights;
    the VAE's factors as `AutoencoderKLLTXVideo.__init__` derives them when its config does not state them."""
    from distill.teachers.base import read_json

    vae = read_json(Path(folder) / "vae" / "config.json")
    dit = read_json(Path(folder) / "transformer" / "config.json")
    stages = sum(bool(s) for s in vae.get("spatio_temporal_scaling", (True, True, True, False)))
    spatial = vae.get("spatial_compression_ratio") or int(vae.get("patch_size", 4)) * 2 ** stages
    temporal = vae.get("temporal_compression_ratio") or int(vae.get("patch_size_t", 1)) * 2 ** stages
    p, pt = int(dit.get("patch_size", 1)), int(dit.get("patch_size_t", 1))
    return int(temporal), int(spatial), (pt, p, p)


def check_video_size(frames: int, height: int, width: int, temporal: int, spatial: int, patch) -> None:
    """Refuse a clip size the LTX VAE, DiT or stock pipeline cannot take, naming the value and what would do."""
    if frames < 1 or (frames - 1) % temporal:
        lo = (max(frames, 1) - 1) // temporal * temporal + 1
        raise ValueError(f"frames={frames} is not {temporal}k+1 (the LTX VAE compresses time {temporal}x); "
                         f"use for example {lo} or {lo + temporal}")
    for name, value, p in (("height", height, patch[1]), ("width", width, patch[2])):
        m = math.lcm(spatial * p, STOCK_SPATIAL_MULTIPLE)
        if value <= 0 or value % m:
            raise ValueError(f"{name}={value} is not divisible by {m} (VAE factor {spatial} x patch {p}, and stock "
                             f"LTXPipeline takes multiples of {STOCK_SPATIAL_MULTIPLE}); use for example "
                             f"{max(m, value // m * m)} or {(value // m + 1) * m}")


def text_mask(embeds: torch.Tensor) -> torch.Tensor:
    """The T5 attention mask [B, L] of embeddings whose padding rows `LTXTeacher.embed` zeroed."""
    return (embeds != 0).any(dim=-1)


def _module(model):
    return getattr(model, "module", model)  # a DeepSpeed engine wraps the DiT


def _param_dtype(model) -> torch.dtype:
    return next(_module(model).parameters()).dtype


class LTXTeacher:
    """A flow-matching spacetime DiT teacher loaded from a diffusers LTX-Video (`LTXPipeline`) folder."""

    image_input = "none"  # LTXPipeline is text-to-video (LTXImageToVideoPipeline is not served)
    takes_last_image = False

    def __init__(self, pipe: LTXPipeline, folder: Path, device: torch.device, max_sequence_length: int = 128,
                 guidance_2: float | None = None, frame_rate: float = DEFAULT_FRAME_RATE):
        from distill.teachers.registry import family

        if guidance_2 is not None:
            raise ValueError(f"teacher {str(folder)!r}: guidance_2={guidance_2} is for two-expert checkpoints; an "
                             f"LTX-Video checkpoint has one DiT (leave sampler.guidance_2 unset)")
        self.family = family("ltx")
        self.pipe = pipe
        self.folder = Path(folder)
        self.device = device
        self.max_sequence_length = max_sequence_length
        self.frame_rate = frame_rate
        self.transformer = pipe.transformer
        self.dit = self.transformer
        self.guidance_2 = None
        self.vae = pipe.vae
        self.dtype = self.transformer.dtype  # the DiT's compute dtype; text embeddings are cast to it
        self.scheduler_config = dict(pipe.scheduler.config)
        self.temporal = pipe.vae_temporal_compression_ratio
        self.spatial = pipe.vae_spatial_compression_ratio
        self.patch = (pipe.transformer_temporal_patch_size, pipe.transformer_spatial_patch_size,
                      pipe.transformer_spatial_patch_size)
        if self.patch != (1, 1, 1):
            raise ValueError(f"{str(self.folder / 'transformer' / 'config.json')!r}: patch_size/patch_size_t "
                             f"{self.patch[1]}/{self.patch[0]}; only 1/1 is served (stock LTXPipeline's latent "
                             f"packing and noise shape agree only then, and every LTX-Video release uses 1)")
        self.channels = self.transformer.config.in_channels  # LTXPipeline.prepare_latents' channel count
        self.rope_interpolation_scale = (self.temporal / frame_rate, self.spatial, self.spatial)
        self._latents_mean = self.vae.latents_mean.detach().float().view(1, -1, 1, 1, 1).clone()
        self._latents_std = self.vae.latents_std.detach().float().view(1, -1, 1, 1, 1).clone()
        self._scaling = float(self.vae.config.scaling_factor)

    @classmethod
    def from_pretrained(cls, source: str, dtype: str = "float32", device: str = "auto", revision: str | None = None,
                        max_sequence_length: int = 128, frame_rate: float = DEFAULT_FRAME_RATE) -> LTXTeacher:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
        return cls.load(resolve(source, revision, family="ltx"), DTYPES[dtype], pick_device(device),
                        max_sequence_length, frame_rate=frame_rate)

    @classmethod
    def load(cls, folder: Path, dtype: torch.dtype, dev: torch.device, max_sequence_length: int = 128,
             guidance_2: float | None = None, frame_rate: float = DEFAULT_FRAME_RATE) -> LTXTeacher:
        check_weight_files(folder)  # a truncated download fails here, naming its file
        # The VAE stays in fp32: it is small next to the DiT, and fp32 keeps decoded colours exact.
        pipe = LTXPipeline.from_pretrained(folder, dtype={"default": dtype, "vae": torch.float32})
        pipe.to(dev)
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
            module.eval().requires_grad_(False)
        return cls(pipe, folder, dev, max_sequence_length, guidance_2, frame_rate)

    # --- sequence parallelism ----------------------------------------------------------------------------------
    def shard_sequence(self, group) -> LTXTeacher:
        """A group of one rank changes nothing; a larger one is refused: the Ulysses split of
        distill.teachers.parallel is written for Wan's attention processor and rotary layout, not LTX's."""
        import torch.distributed as dist

        n = 1 if group is None or not dist.is_initialized() else dist.get_world_size(group)
        if n > 1:
            raise ValueError(f"sequence parallelism over {n} ranks is not available for LTX-Video teachers yet "
                             f"(parallel.sequence={n}); use parallel.sequence=1 (data parallelism only)")
        return self

    def unshard_sequence(self) -> LTXTeacher:
        return self

    # --- shapes -------------------------------------------------------------------------------------------------
    def check_video_size(self, frames: int, height: int, width: int) -> None:
        check_video_size(frames, height, width, self.temporal, self.spatial, self.patch)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self.check_video_size(frames, height, width)
        return (self.channels, (frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)

    # --- text ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """T5 embeddings [B, L, D] of any texts (L = max_sequence_length), their padding rows zero: the attention
        mask travels inside them (`text_mask`)."""
        if self.pipe.text_encoder is None:
            raise RuntimeError("this teacher's text encoder was dropped (drop_text_encoder); embed the texts before")
        embeds, mask = self.pipe._get_t5_prompt_embeds(prompt=list(texts), max_sequence_length=self.max_sequence_length,
                                                       device=self.device)
        if not bool(mask.any(dim=-1).all()):
            raise ValueError(f"texts {[t for t, m in zip(texts, mask.any(dim=-1)) if not m]} give no token at all; "
                             f"the tokenizer must end every text with </s> as T5's does")
        return (embeds * mask[..., None].to(embeds.dtype)).to(self.dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str], negative: str | list[str] | None = "", images=None, last_images=None,
               size=None) -> Cond:
        """T5 embeddings of the prompts and, unless `negative` is None, of the negative prompt(s). LTXPipeline is
        text-to-video: images are refused."""
        refuse_images(self._what(), images, last_images)
        prompts = prompt_list(prompts)
        if negative is None:
            return Cond(self.embed(prompts), None)
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one "
                             f"per prompt")
        both = self.embed(prompts + negatives)  # one encoder batch, as the pipeline's two calls give the same rows
        return Cond(both[:len(prompts)], both[len(prompts):])

    def encode_images(self, images, size, last_images=None):
        refuse_images(self._what(), images, last_images)
        raise ValueError("encode_images: no images given")

    def _what(self) -> str:
        return f"teacher {str(self.folder)!r} ({type(self.pipe).__name__})"

    # --- the velocity field -------------------------------------------------------------------------------------
    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] -> LTX tokens [B, F·H·W, C], in the stock pipeline's order."""
        return LTXPipeline._pack_latents(x, self.patch[1], self.patch[0])

    def unpack(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return LTXPipeline._unpack_latents(tokens, *grid, self.patch[1], self.patch[0])

    def forward(self, model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, image: Cond | None = None
                ) -> torch.Tensor:
        """One DiT forward at noise levels t ∈ [0, 1] ([B], float64) on unpacked latents x [B, C, F, H, W]; the
        velocity comes back unpacked. `model` is this teacher's DiT or any network of its shape (a student, its EMA
        copy, or a DeepSpeed engine around one)."""
        return self.forward_all(model, x, t, embeds, image)[0]

    def forward_all(self, model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, image: Cond | None = None,
                    **kwargs) -> tuple:
        """`forward`, returning every output of the network (a headed critic gives velocity and logits; only the
        first, the velocity, is unpacked), with `kwargs` passed on to it."""
        refuse_images(self._what(), image.image_latents if image is not None else None)
        dtype = _param_dtype(model)
        grid = tuple(x.shape[2:])
        # As LTXPipeline: the latent grid (not divided by the patch, which is 1) and the RoPE scale (temporal VAE
        # factor / frame rate, spatial factor, spatial factor).
        out = model(hidden_states=self.pack(x).to(dtype), encoder_hidden_states=embeds.to(dtype),
                    timestep=self._timestep(t), encoder_attention_mask=text_mask(embeds), num_frames=grid[0],
                    height=grid[1], width=grid[2], rope_interpolation_scale=self.rope_interpolation_scale,
                    return_dict=False, **kwargs)
        return (self.unpack(out[0], grid), *out[1:])

    @staticmethod
    def _timestep(t: torch.Tensor) -> torch.Tensor:
        """The DiT's timestep input: t·1000 in float32, as the scheduler's `timesteps` (sigma·1000 in float32; the
        float64 product of a float32 sigma is exact, so rounding it once gives the same number)."""
        return (t.to(torch.float64) * NUM_TRAIN_TIMESTEPS).to(torch.float32)

    def guided(self, model, x, t, cond: Cond, guidance: float, guidance_2: float | None = None) -> torch.Tensor:
        """`model`'s velocity with classifier-free guidance when guidance > 1, both halves in one forward, combined
        in float32 as the stock pipeline does (unconditional half first, as there). `guidance_2` is for experts and
        must be None."""
        if guidance_2 is not None:
            raise ValueError(f"guidance_2={guidance_2}: an LTX-Video teacher has one DiT, no low-noise expert")
        if not (guidance > 1.0 and cond.negative_embeds is not None):
            return self.forward(model, x, t, cond.prompt_embeds)
        both = self.forward(model, torch.cat([x, x]), torch.cat([t, t]),
                            torch.cat([cond.negative_embeds, cond.prompt_embeds])).float()
        v_uncond, v_cond = both.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor | float, cond: Cond, guidance: float = 1.0,
                 guidance_2: float | None = None) -> torch.Tensor:
        """v(x_t, t, text) = noise - x0 with classifier-free guidance when guidance > 1; t ∈ [0, 1], scalar or per
        sample."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        return self.guided(self.dit, x_t, t, cond, guidance, guidance_2)

    def image_frames(self, x: torch.Tensor, image: Cond | None) -> None:
        return None  # text-to-video: every frame is generated

    def keep_image_frames(self, x: torch.Tensor, image: Cond | None) -> torch.Tensor:
        return x

    def drop_text_encoder(self) -> None:
        self.pipe.text_encoder = None

    def drop_dit(self) -> None:
        self.dit = self.transformer = None
        self.pipe.transformer = None

    # --- sampling -----------------------------------------------------------------------------------------------
    def noise(self, n: int, frames: int, height: int, width: int, seed: int | list[int]) -> torch.Tensor:
        """Initial noise, one generator per clip: clip i's noise depends only on its own seed. It is what
        `LTXPipeline.prepare_latents` draws for the same generators (in [B, C, F, H, W], before it packs)."""
        gens = [torch.Generator(self.device).manual_seed(s) for s in seed_list(seed, n)]
        return randn_tensor((n, *self.latent_shape(frames, height, width)), generator=gens, device=self.device,
                            dtype=torch.float32)

    def scheduler(self, shift: float | None = None) -> FlowMatchEulerDiscreteScheduler:
        """The folder's scheduler (shift None: LTX's resolution-dependent shift), or the same with the static
        timestep shift `shift` in place of it (what stock LTXPipeline does given that scheduler)."""
        config = dict(self.scheduler_config)
        if shift is not None:
            config.update(use_dynamic_shifting=False, shift=float(shift))
        return FlowMatchEulerDiscreteScheduler.from_config(config)

    def schedule(self, steps: int, frames: int, height: int, width: int, shift: float | None = None) -> torch.Tensor:
        """The `steps + 1` noise levels (float32, ending at 0) at which stock LTXPipeline samples this clip size
        with `self.scheduler(shift)`: linspace(1, 1/steps, steps), shifted by mu (from the latent token count) or
        by `shift`, stretched to the scheduler's shift_terminal when it has one."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        scheduler = self.scheduler(shift)
        _, f, h, w = self.latent_shape(frames, height, width)
        c = scheduler.config
        mu = calculate_shift(f * h * w, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        if not bool(torch.isfinite(scheduler.sigmas).all()):
            raise ValueError(f"the scheduler of {str(self.folder / 'scheduler')!r} gives non-finite noise levels for "
                             f"{steps} step(s) (shift_terminal={c.get('shift_terminal')} cannot stretch a one-step "
                             f"grid); use at least 2 steps")
        return scheduler.sigmas

    def stock_noise(self, like: torch.Tensor) -> torch.Tensor:
        """Fresh noise as the stock scheduler draws it with `stochastic_sampling` (the pipeline passes it no
        generator: the global torch RNG, in LTX's packed token layout), unpacked: with `torch.manual_seed(s)` before
        each, a consistency sample here and in stock LTXPipeline re-noise alike."""
        tokens = self.pack(torch.empty(like.shape, device="meta"))
        return self.unpack(randn_tensor(tokens.shape, device=like.device, dtype=like.dtype), tuple(like.shape[2:]))

    @torch.no_grad()
    def sample(self, prompts: list[str], steps: int = 50, guidance: float = 3.0, shift: float | None = None,
               seed: int | list[int] = 0, sampler: str = "euler", negative: str = "", frames: int = 161,
               height: int = 512, width: int = 704, progress: bool = False, cond: Cond | None = None,
               guidance_2: float | None = None, grid=None, images=None, last_images=None) -> torch.Tensor:
        """Normalised latents [B, C, F, H, W] of the prompts. "euler" is stock LTXPipeline's sampler: its grid for
        this clip size (`schedule`; `shift` None keeps the folder's resolution-dependent shift). "consistency" is
        the project's few-step sampler on `student_levels(steps, shift, grid)`, re-noising from the per-clip
        generators after the initial noise, in the packed token layout the stock scheduler draws it in."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is not available for LTX-Video teachers; one of {list(SAMPLERS)} "
                             f"(stock LTXPipeline ships FlowMatchEulerDiscreteScheduler only)")
        refuse_images(self._what(), images, last_images, None if cond is None else cond.image_latents)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cond = cond if cond is not None else self.encode(prompts, negative if guidance > 1.0 else None)
        gens = [torch.Generator(self.device).manual_seed(s) for s in seed_list(seed, len(prompts))]
        x = randn_tensor((len(prompts), *self.latent_shape(frames, height, width)), generator=gens,
                         device=self.device, dtype=torch.float32)
        model = lambda x_t, t: self.velocity(x_t, t, cond, guidance, guidance_2)
        if sampler == "euler":
            return samplers.sample_euler(model, x, self.schedule(steps, frames, height, width, shift), progress)
        if shift is None:
            raise ValueError("the consistency sampler needs a timestep shift (sampler.shift); got None")
        size = tuple(x.shape[2:])

        def noise(like: torch.Tensor) -> torch.Tensor:
            # Drawn in LTX's packed token layout [B, F·H·W, C], as the stock scheduler draws its re-noising noise,
            # and unpacked: a clip's generator state put into the global RNG before stock LTXPipeline then gives the
            # same noise there (an unpacked draw would give the same numbers in another order).
            tokens = self.pack(torch.empty(like.shape, device="meta")).shape
            return self.unpack(randn_tensor(tokens, generator=gens, device=self.device, dtype=like.dtype), size)

        return samplers.sample("consistency", model, x, steps, shift, None, progress, noise, grid)

    # --- pixels -------------------------------------------------------------------------------------------------
    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """LTXPipeline._denormalize_latents: the DiT's latents to the VAE's."""
        dev = latents.device
        return latents * self._latents_std.to(dev) / self._scaling + self._latents_mean.to(dev)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        dev = z.device
        return (z - self._latents_mean.to(dev)) * self._scaling / self._latents_std.to(dev)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, H, W] to uint8 video [B, T, H, W, 3]. A timestep-conditioned VAE (LTX-Video
        0.9.1+) decodes at the stock pipeline's default decode_timestep 0 with noise scale 0."""
        z = self.denormalize(latents.to(self.device, torch.float32)).to(self.vae.dtype)
        temb = (torch.zeros(z.shape[0], device=self.device, dtype=z.dtype)
                if self.vae.config.timestep_conditioning else None)
        video = self.vae.decode(z, temb, return_dict=False)[0]  # [B, 3, T, H, W] in [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu()

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """uint8 video [B, T, H, W, 3] to normalised latents (the VAE posterior's mean unless `sample`)."""
        x = video.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return self.normalize(z.float())
