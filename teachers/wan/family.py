"""The Wan family plug-in: Wan 2.1 and 2.2 checkpoints in diffusers' `WanPipeline` (text-to-video; Wan 2.2 TI2V-5B's
also takes an image) and `WanImageToVideoPipeline` layouts (Wan 2.1 I2V, Wan 2.2 I2V A14B: teachers/wan/i2v.py),
with one DiT (`transformer`) or two experts (Wan 2.2 A14B: `transformer` for the high-noise steps, `transformer_2`
for the low-noise ones, switching at `boundary_ratio`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distill.teachers.base import Family, FamilyError, VideoFactors, dit_folder, read_json
from distill.teachers.registry import register
from distill.teachers.wan import i2v, lora_format
from distill.teachers.wan.experts import WanExperts

EXPERTS = ("transformer", "transformer_2")
EXPERT_LABELS = {"transformer": "high_noise", "transformer_2": "low_noise"}  # LightX2V's / ComfyUI's file names
LORA_FILE = "pytorch_lora_weights.safetensors"


@register
class WanFamily(Family):
    name = "wan"
    description = ("Wan 2.1 / 2.2 text-to-video (WanPipeline; TI2V-5B also from an image) and image-to-video "
                   "(WanImageToVideoPipeline: 2.1 I2V, 2.2 I2V A14B), one DiT or two experts (A14B)")
    pipeline_classes = ("WanPipeline", i2v.I2V_PIPELINE)
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    dit_classes = ("WanTransformer3DModel", "WanExperts")
    shape_keys = ("in_channels", "out_channels", "patch_size", "text_dim", "freq_dim")
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    native_lora_file = lora_format.WAN_LORA_FILE
    component_classes = {"transformer": ("WanTransformer3DModel",), "transformer_2": ("WanTransformer3DModel",),
                         "vae": ("AutoencoderKLWan",), "text_encoder": ("UMT5EncoderModel",)}

    # --- a folder's configs ---------------------------------------------------------------------------------
    def experts(self, folder: Path) -> tuple[str, ...]:
        index = read_json(Path(folder) / "model_index.json")
        second = index.get("transformer_2")
        two = isinstance(second, list) and bool(second) and second[0] is not None
        return EXPERTS if two else EXPERTS[:1]

    def image_input(self, folder: Path) -> str:
        return i2v.image_input(read_json(Path(folder) / "model_index.json"))

    def takes_last_image(self, folder: Path) -> bool:
        return i2v.takes_last_image(read_json(Path(folder) / "model_index.json"), self.dit_config(folder))

    def boundary(self, folder: Path) -> float | None:
        if len(self.experts(folder)) == 1:
            return None
        return read_json(Path(folder) / "model_index.json").get("boundary_ratio")

    def check_folder(self, folder: Path, name: str) -> None:
        super().check_folder(folder, name)
        experts = self.experts(folder)
        boundary = read_json(folder / "model_index.json").get("boundary_ratio")
        if len(experts) == 2:
            if not isinstance(boundary, (int, float)) or not 0.0 < boundary < 1.0:
                raise FamilyError(f"teacher {name!r}: {folder / 'model_index.json'} has two experts (transformer_2) "
                                  f"but boundary_ratio is {boundary!r}; it must lie in (0, 1)")
            a, b = (read_json(folder / e / "config.json") for e in experts)
            diff = [k for k in self.shape_keys + ("num_attention_heads", "attention_head_dim")
                    if a.get(k) != b.get(k)]
            if diff:
                raise FamilyError(f"teacher {name!r}: its experts differ in {diff}; both must have one shape")
        i2v.check_folder(Path(folder), name, read_json(folder / "model_index.json"), experts)

    def video_factors(self, folder: Path) -> VideoFactors:
        from distill.teachers.wan.teacher import video_factors

        temporal, spatial, patch = video_factors(Path(folder))
        return VideoFactors(temporal, spatial, tuple(patch))

    def check_video_size(self, frames: int, height: int, width: int, factors: VideoFactors) -> None:
        from distill.teachers.wan.teacher import check_video_size

        check_video_size(frames, height, width, factors.temporal, factors.spatial, factors.patch)

    def check_init(self, init: str, folder: Path, key: str, teacher: str) -> None:
        super().check_init(init, folder, key, teacher)
        ours, theirs = len(self.experts(folder)), len(self._init_experts(Path(init)))
        if ours != theirs:
            raise FamilyError(f"{key}: {init!r} holds {theirs} expert DiT(s) but teacher {teacher!r} has {ours}; "
                              f"give a {'two-expert pipeline folder (transformer and transformer_2)' if ours == 2 else 'single DiT'} "
                              f"or 'teacher'")

    def _init_experts(self, path: Path) -> tuple[str, ...]:
        if (path / "model_index.json").is_file():
            return self.experts(path)
        return EXPERTS if (path / "transformer_2" / "config.json").is_file() else EXPERTS[:1]

    # --- loading --------------------------------------------------------------------------------------------
    def load(self, folder: Path, dtype: torch.dtype, device: torch.device, max_sequence_length: int,
             guidance_2: float | None = None):
        from distill.teachers.wan.teacher import WanTeacher

        return WanTeacher.load(folder, dtype, device, max_sequence_length, guidance_2)

    # --- networks -------------------------------------------------------------------------------------------
    def dit_from_pretrained(self, folder: Path) -> nn.Module:
        from diffusers import WanTransformer3DModel

        folder = Path(folder)
        experts = self._init_experts(folder)
        if len(experts) == 1:
            return WanTransformer3DModel.from_pretrained(dit_folder(folder), torch_dtype=torch.float32)
        base = folder if (folder / "transformer" / "config.json").is_file() else None
        if base is None:
            raise FamilyError(f"{str(folder)!r}: a two-expert folder needs transformer/ and transformer_2/")
        boundary = (read_json(folder / "model_index.json").get("boundary_ratio")
                    if (folder / "model_index.json").is_file() else None)
        if boundary is None:
            raise FamilyError(f"{str(folder)!r} has two experts but no boundary_ratio in model_index.json")
        high, low = (WanTransformer3DModel.from_pretrained(folder / e, torch_dtype=torch.float32) for e in experts)
        return WanExperts(high, low, boundary)

    def meta_dit(self, config: dict, layers: int | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
        from diffusers import WanTransformer3DModel

        from distill.teachers.base import meta_from_config

        return meta_from_config(WanTransformer3DModel, config, layers, dtype)

    def dit_inputs(self, dit_config: dict, x: torch.Tensor, text_tokens: int) -> dict[str, torch.Tensor]:
        text = torch.empty(x.shape[0], text_tokens, dit_config.get("text_dim", 4096), device=x.device, dtype=x.dtype)
        inputs = {"hidden_states": x, "timestep": torch.empty(x.shape[0], device=x.device),
                  "encoder_hidden_states": text}
        if i2v.reads_image_tokens(dit_config):  # Wan 2.1 I2V: CLIP ViT-H/14's 257 tokens (the pairs' for FLF2V)
            tokens = dit_config.get("pos_embed_seq_len") or 257
            inputs["encoder_hidden_states_image"] = torch.empty(x.shape[0], tokens, dit_config["image_dim"],
                                                                device=x.device, dtype=x.dtype)
        return inputs

    def dit_blocks(self, dit: nn.Module) -> nn.ModuleList:
        if isinstance(dit, WanExperts):
            raise FamilyError("features at named blocks of a two-expert network: ask one of its experts "
                              "(a discriminator or a critic with heads is not built on two experts)")
        return dit.blocks

    def dit_output(self, dit: nn.Module) -> list:
        return [dit.proj_out, dit.norm_out, dit.scale_shift_table]

    def experts_of(self, dit: nn.Module) -> list[tuple[str, nn.Module]]:
        dit = getattr(dit, "module", dit)
        if isinstance(dit, WanExperts):
            return list(zip(EXPERTS, dit.experts))
        return [("transformer", dit)]

    def split_experts(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        if not any(k.startswith("experts.") for k in state):
            return {"transformer": state}
        parts: dict[str, dict[str, torch.Tensor]] = {e: {} for e in EXPERTS}
        for key, value in state.items():
            index, _, rest = key.removeprefix("experts.").partition(".")
            parts[EXPERTS[int(index)]][rest] = value
        return parts

    def join_experts(self, parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if set(parts) == {"transformer"}:
            return parts["transformer"]
        return {f"experts.{EXPERTS.index(c)}.{k}": v for c, state in parts.items() for k, v in state.items()}

    # --- LoRA files -----------------------------------------------------------------------------------------
    def save_lora(self, folder: Path, weights: dict[str, torch.Tensor], lora: dict) -> list[Path]:
        from diffusers import WanPipeline
        from safetensors import safe_open
        from safetensors.torch import save_file

        parts = self.split_experts({k.replace(".default", ""): w for k, w in weights.items()})
        files = self.lora_files(folder, tuple(parts))
        for component, layers in parts.items():
            dest = files[component].parent
            dest.mkdir(parents=True, exist_ok=True)
            WanPipeline.save_lora_weights(dest, transformer_lora_layers=layers,
                                          transformer_lora_adapter_metadata=dict(lora))
            if len(parts) == 2:  # say which expert the file was trained for; loading the wrong one is refused
                with safe_open(str(files[component]), "pt") as f:
                    state, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
                save_file(state, str(files[component]), metadata={**meta, "distill.expert": component})
        return list(files.values())

    def check_lora_expert(self, lora_file: Path, component: str) -> None:
        """Refuse an adapter file recorded for another expert than `component` (FamilyError naming both)."""
        from safetensors import safe_open

        with safe_open(str(lora_file), "pt") as f:
            recorded = (f.metadata() or {}).get("distill.expert")
        if recorded is not None and recorded != component:
            raise FamilyError(f"LoRA file {str(lora_file)!r} was trained for expert {recorded!r} "
                              f"({EXPERT_LABELS.get(recorded, '?')}), not {component!r}")

    def fuse_lora(self, base: Path, lora_file: Path, dest: Path, component: str = "transformer") -> int:
        from diffusers import WanPipeline, WanTransformer3DModel

        from distill.teachers.lora import fuse_checked

        self.check_lora_expert(lora_file, component)
        return fuse_checked(WanPipeline, WanTransformer3DModel, base, lora_file, dest)

    def write_native_lora(self, lora_file: Path, dest: Path) -> int:
        return lora_format.write_wan_lora(lora_file, dest)

    def native_lora_name(self, component: str, experts: int) -> str:
        """The native adapter's file name: `wan_lora.safetensors`, or one per expert, named by its noise range
        (as LightX2V's and ComfyUI's high-/low-noise LoRA pairs are)."""
        if experts == 1:
            return lora_format.WAN_LORA_FILE
        return lora_format.WAN_LORA_FILE.replace(".safetensors", f"_{EXPERT_LABELS[component]}.safetensors")

    # --- export ---------------------------------------------------------------------------------------------
    def pipeline_config(self, teacher_folder: Path) -> dict:
        boundary = self.boundary(teacher_folder)
        return {} if boundary is None else {"boundary_ratio": boundary}

    def readme(self, out_name: str, sampler: dict, video, max_sequence_length: int, lora: bool,
               experts: tuple[str, ...]) -> str:
        from distill.teachers.samplers import LEGACY_GRID, student_levels

        steps, shift, grid = sampler["steps"], sampler["shift"], sampler.get("grid", LEGACY_GRID)
        scheduler = f"`FlowMatchEulerDiscreteScheduler(shift={shift}, stochastic_sampling=True)`" \
            if grid == LEGACY_GRID else (
                f"a `FlowMatchEulerDiscreteScheduler` with `stochastic_sampling=True` whose static shift and "
                f"`shift_terminal` land on the student's {grid!r} grid "
                f"{[round(float(v), 4) for v in student_levels(steps, shift, grid)]}: it is exact for "
                f"num_inference_steps={steps} only")
        text = f"""Its scheduler is {scheduler}.{
            " Its two experts switch at the teacher's `boundary_ratio`, as the teacher's do." if len(experts) == 2 else ""}

```python
import torch
from diffusers import WanPipeline
pipe = WanPipeline.from_pretrained("{out_name}")
video = pipe("a red disc moving left slowly on a black background", num_inference_steps={steps},
             guidance_scale=1.0, num_frames={video.frames}, height={video.height}, width={video.width},
             max_sequence_length={max_sequence_length}, generator=torch.Generator().manual_seed(0)).frames[0]
```

The scheduler draws its re-noising noise from the global torch RNG (the pipeline passes it no generator): call
`torch.manual_seed(...)` before the pipeline as well for a fully reproducible clip.
"""
        if not lora:
            return text
        native = [self.native_lora_name(e, len(experts)) for e in experts]
        second = """
pipe.load_lora_weights("{0}/lora/transformer_2", load_into_transformer_2=True)""".format(out_name) \
            if len(experts) == 2 else ""
        return text + f"""
## The adapter alone

`lora/{LORA_FILE}` is the LoRA the student was trained as{
            " (the high-noise expert's; `lora/transformer_2/` holds the low-noise expert's)" if len(experts) == 2
            else ""}; on the teacher it gives the same transformer as `transformer/` here (which is that LoRA fused in):

```python
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
pipe = WanPipeline.from_pretrained("<the teacher folder>")
pipe.load_lora_weights("{out_name}/lora"){second}
pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift={shift}, stochastic_sampling=True)
```

`lora/{"`, `lora/".join(native)}` hold the same adapter{"s" if len(native) > 1 else ""} in the original Wan key names
(`diffusion_model.blocks.0.self_attn.q...`, alpha / rank folded into `lora_B`{
            "; one file per expert, named by its noise range as LightX2V's and ComfyUI's high-/low-noise pairs are"
            if len(native) > 1 else ""}), for ComfyUI, DiffSynth-Studio and LightX2V; diffusers loads them too, with
`weight_name=`.
"""
