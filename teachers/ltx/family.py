"""The LTX-Video family plug-in: text-to-video checkpoints in diffusers' `LTXPipeline` layout (one DiT,
`LTXVideoTransformer3DModel`; `AutoencoderKLLTXVideo`; a T5 encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from distill.teachers.base import (
    Family,
    FamilyError,
    VideoFactors,
    dit_folder,
    read_json,
)
from distill.teachers.registry import register
from torch import nn

LORA_FILE = "pytorch_lora_weights.safetensors"


@register
class LTXFamily(Family):
    name = "ltx"
    description = "LTX-Video text-to-video (LTXPipeline): one DiT, T5 text encoder, 8x32x32 video VAE"
    pipeline_classes = ("LTXPipeline",)
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    dit_classes = ("LTXVideoTransformer3DModel",)
    component_classes = {"transformer": ("LTXVideoTransformer3DModel",), "vae": ("AutoencoderKLLTXVideo",),
                         "text_encoder": ("T5EncoderModel",)}
    shape_keys = ("in_channels", "out_channels", "patch_size", "patch_size_t", "caption_channels")
    # The four projections of self- and cross-attention, and the GELU feed-forward's two linears
    # (`ff.net.0.proj`, `ff.net.2`), in every `transformer_blocks.N`.
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")

    # --- a folder's configs ---------------------------------------------------------------------------------
    def check_folder(self, folder: Path, name: str) -> None:
        super().check_folder(folder, name)
        config = folder / "transformer" / "config.json"
        dit = read_json(config)
        patch = (dit.get("patch_size", 1), dit.get("patch_size_t", 1))
        if patch != (1, 1):
            raise FamilyError(f"teacher {name!r}: {str(config)!r} has patch_size={patch[0]}, patch_size_t={patch[1]}; "
                              f"only 1 and 1 are served (stock LTXPipeline's latent packing and noise shape agree "
                              f"only then, and every LTX-Video release uses them)")

    def video_factors(self, folder: Path) -> VideoFactors:
        from distill.teachers.ltx.teacher import video_factors

        temporal, spatial, patch = video_factors(Path(folder))
        return VideoFactors(temporal, spatial, tuple(patch))

    def check_video_size(self, frames: int, height: int, width: int, factors: VideoFactors) -> None:
        from distill.teachers.ltx.teacher import check_video_size

        check_video_size(frames, height, width, factors.temporal, factors.spatial, factors.patch)

    def patch(self, dit_config: dict) -> tuple[int, int, int]:
        p = int(dit_config.get("patch_size", 1))
        return (int(dit_config.get("patch_size_t", 1)), p, p)

    # --- loading --------------------------------------------------------------------------------------------
    def load(self, folder: Path, dtype: torch.dtype, device: torch.device, max_sequence_length: int,
             guidance_2: float | None = None):
        from distill.teachers.ltx.teacher import LTXTeacher

        return LTXTeacher.load(Path(folder), dtype, device, max_sequence_length, guidance_2)

    # --- networks -------------------------------------------------------------------------------------------
    def dit_from_pretrained(self, folder: Path) -> nn.Module:
        from diffusers import LTXVideoTransformer3DModel

        where = dit_folder(folder)
        if where is None:
            raise FamilyError(f"{str(folder)!r} is neither an LTX transformer folder nor a pipeline folder "
                              f"(no config.json or transformer/config.json)")
        return LTXVideoTransformer3DModel.from_pretrained(where, torch_dtype=torch.float32)

    def meta_dit(self, config: dict, layers: int | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
        from diffusers import LTXVideoTransformer3DModel

        from distill.teachers.base import meta_from_config

        return meta_from_config(LTXVideoTransformer3DModel, config, layers, dtype)

    def dit_inputs(self, dit_config: dict, x: torch.Tensor, text_tokens: int) -> dict[str, torch.Tensor]:
        """As `LTXTeacher.forward_all` feeds the DiT: x [B, C, F, H, W] packed to tokens [B, F·H·W, C], T5 text
        [B, L, caption_channels] with its mask, the latent grid and the RoPE scale (LTX's: 8/25, 32, 32)."""
        b, _, f, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, x.shape[1])  # LTXPipeline._pack_latents, patch 1
        text = torch.empty(b, text_tokens, int(dit_config.get("caption_channels", 4096)), device=x.device,
                           dtype=x.dtype)
        return {"hidden_states": tokens, "timestep": torch.empty(b, device=x.device),
                "encoder_hidden_states": text,
                "encoder_attention_mask": torch.ones(b, text_tokens, device=x.device, dtype=torch.bool),
                "num_frames": f, "height": h, "width": w, "rope_interpolation_scale": (8 / 25, 32, 32)}

    def dit_blocks(self, dit: nn.Module) -> nn.ModuleList:
        return getattr(dit, "module", dit).transformer_blocks

    def dit_output(self, dit: nn.Module) -> list:
        dit = getattr(dit, "module", dit)
        return [dit.proj_out, dit.norm_out, dit.scale_shift_table]

    # --- LoRA files -----------------------------------------------------------------------------------------
    def save_lora(self, folder: Path, weights: dict[str, torch.Tensor], lora: dict) -> list[Path]:
        from diffusers import LTXPipeline

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        layers = {k.replace(".default", ""): w for k, w in weights.items()}
        LTXPipeline.save_lora_weights(folder, transformer_lora_layers=layers,
                                      transformer_lora_adapter_metadata=dict(lora), weight_name=LORA_FILE)
        return [folder / LORA_FILE]

    def fuse_lora(self, base: Path, lora_file: Path, dest: Path, component: str = "transformer") -> int:
        from diffusers import LTXPipeline, LTXVideoTransformer3DModel

        from distill.teachers.lora import fuse_checked

        if component != "transformer":
            raise FamilyError(f"an LTX-Video checkpoint has one DiT, 'transformer'; got component {component!r}")
        return fuse_checked(LTXPipeline, LTXVideoTransformer3DModel, base, lora_file, dest)

    # --- export -------------------------------------------------------------------------------------------------
    def few_step_scheduler(self, shift: float, teacher_folder: Path, steps: int | None = None, grid=None):
        """The scheduler with which stock LTXPipeline samples a `steps`-step consistency student exactly as
        `samplers.sample_consistency` on `student_levels(steps, shift, grid)`. Any grid but the legacy "euler" one
        is fitted by schedule.few_step_scheduler (the same algebra as below, for any rule); the legacy one keeps
        the closed form below.

        LTXPipeline always hands its scheduler sigmas = linspace(1, 1/N, N) (and a `mu`, which a scheduler
        without dynamic shifting ignores); the project's grid is M_s(linspace(1, a, N)), M_s(σ) = sσ/(1 + (s-1)σ)
        the timestep shift and a = M_s(1/1000) (FlowMatchEulerDiscreteScheduler's default grid). In u = 1 - σ, M_s
        is u ↦ u/(s - (s-1)u), and both linspace-to-linspace maps and `shift_terminal`'s stretch are u ↦ k·u, so
        M_s ∘ (u ↦ b·u) = (u ↦ k·u) ∘ M_s' with b = (1-a)·N/(N-1) and s' = s/(s - b(s-1)): a static shift s'
        followed by the stretch to the grid's last level gives the project's grid exactly, for this N only (so
        `steps` is required). s' may be large or negative; it is still a plain rational map of the given sigmas.
        One step needs no stretch (the grid is [1]), and a stretch of it would divide by zero."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from distill.teachers.samplers import consistency_timesteps

        if steps is None:
            raise FamilyError("family 'ltx': few_step_scheduler needs the student's step count (steps=N): stock "
                              "LTXPipeline feeds its scheduler linspace(1, 1/N, N), so the scheduler that lands on "
                              "the consistency grid depends on N")
        if steps < 1:
            raise FamilyError(f"family 'ltx': steps must be at least 1, got {steps}")
        from distill.teachers.samplers import LEGACY_GRID, student_levels
        from distill.teachers.schedule import few_step_scheduler

        if grid is not None and grid != LEGACY_GRID:
            try:
                return few_step_scheduler(student_levels(steps, shift, grid), sigmas_given=True)
            except ValueError as err:
                raise FamilyError(f"family 'ltx': {err}") from None
        base = {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "stochastic_sampling": True,
                "invert_sigmas": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                "use_beta_sigmas": False}
        if steps == 1:
            return FlowMatchEulerDiscreteScheduler(shift=1.0, shift_terminal=None, **base)
        target = consistency_timesteps(steps, shift).numpy()
        s = float(shift)
        a = float(FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=s).sigma_min)
        b = (1.0 - a) * steps / (steps - 1)
        denominator = s - b * (s - 1.0)
        if abs(denominator) < 1e-9:  # M_s' degenerates (s' = ∞): the grid is then M_∞ = 1 everywhere but the end
            raise FamilyError(f"family 'ltx': no FlowMatchEulerDiscreteScheduler reproduces the {steps}-step grid of "
                              f"shift {shift} (its static shift would be infinite); pick another shift")
        scheduler = FlowMatchEulerDiscreteScheduler(shift=s / denominator, shift_terminal=float(target[-1]), **base)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=0.0)
        got = scheduler.sigmas[:-1].to(torch.float64).numpy()
        if not np.all(np.isfinite(got)) or np.abs(got - target).max() > 1e-5:
            raise FamilyError(f"family 'ltx': the exported scheduler's {steps}-step grid {got.tolist()} does not match "
                              f"the consistency grid {target.tolist()} (shift {shift})")
        return scheduler

    def readme(self, out_name: str, sampler: dict, video, max_sequence_length: int, lora: bool,
               experts: tuple[str, ...]) -> str:
        steps, shift = sampler["steps"], sampler["shift"]
        text = f"""Its scheduler is a `FlowMatchEulerDiscreteScheduler` with `stochastic_sampling=True` whose static
shift and `shift_terminal` turn the linspace(1, 1/{steps}, {steps}) sigmas that LTXPipeline hands it into the
student's {sampler.get("grid", "euler")!r} grid of shift {shift}: it is exact for {steps} steps only.

```python
import torch
from diffusers import LTXPipeline
pipe = LTXPipeline.from_pretrained("{out_name}")
torch.manual_seed(0)
video = pipe("a red disc moving left slowly on a black background", num_inference_steps={steps},
             guidance_scale=1.0, num_frames={video.frames}, height={video.height}, width={video.width},
             max_sequence_length={max_sequence_length}, generator=torch.Generator().manual_seed(0)).frames[0]
```

The scheduler draws its re-noising noise from the global torch RNG (the pipeline passes it no generator): call
`torch.manual_seed(...)` before the pipeline as well for a fully reproducible clip.
"""
        if not lora:
            return text
        return text + f"""
## The adapter alone

`lora/{LORA_FILE}` is the LoRA the student was trained as; on the teacher it gives the same transformer as
`transformer/` here (which is that LoRA fused in):

```python
from diffusers import LTXPipeline
pipe = LTXPipeline.from_pretrained("<the teacher folder>")
pipe.load_lora_weights("{out_name}/lora")
pipe.scheduler = type(pipe.scheduler).from_pretrained("{out_name}/scheduler")
```
"""
