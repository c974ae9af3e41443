"""The networks of a run and their DeepSpeed engines: the frozen teacher, the trainable student (full or LoRA), and
the student's EMA.

Each trainable network gets its own `deepspeed.initialize` engine. Frozen networks are held in the teacher's dtype
and, under ZeRO-3, wrapped in an optimizer-less stage-3 engine so that their weights are partitioned across ranks
too (a 14B teacher next to a 14B student). The EMA copy lives in the same layout as the student: under ZeRO-3 it
is updated shard by shard, on each rank's own partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import deepspeed
import torch
from deepspeed.runtime.zero.partition_parameters import GatheredParameters

from distill.core.config import ConfigError
from distill.core.dist import rank_world
from distill.core.logs import quiet_diffusers
from distill.teachers.base import Family, FamilyError
from distill.train_config import TrainConfig, deepspeed_path


# --- DeepSpeed configs ------------------------------------------------------------------------------------------
def deepspeed_config(cfg: TrainConfig) -> dict:
    """The run's DeepSpeed config: the JSON file, with "auto" values filled from the run config."""
    path = deepspeed_path(cfg.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    filled = {"train_micro_batch_size_per_gpu": (cfg.data.batch_size, "data.batch_size"),
              "gradient_accumulation_steps": (cfg.train.grad_accum, "train.grad_accum"),
              "gradient_clipping": (cfg.optim.grad_clip or 0.0, "optim.grad_clip")}
    for key, (value, source) in filled.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ConfigError(f"{path}: key {key!r} is {ds[key]!r} but the run config says {value!r} ({source}); "
                              f"set it to \"auto\" so that one place decides")
    if ds.get("train_batch_size", "auto") == "auto":
        ds.pop("train_batch_size", None)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: key 'zero_optimization.stage' is {stage!r}; one of 0, 1, 2, 3")
    if "optimizer" in ds:
        params = ds["optimizer"].setdefault("params", {})
        o = cfg.optim
        for key, value in (("lr", o.lr), ("betas", list(o.betas)), ("eps", o.eps), ("weight_decay", o.weight_decay)):
            if params.get(key, "auto") == "auto":
                params[key] = value
    if cfg.optim.name != "adamw" and "optimizer" not in ds:
        # ZeRO partitions any torch optimizer's state; DeepSpeed only asks to be told that it is not Adam.
        ds.setdefault("zero_allow_untested_optimizer", True)
    for section in ("fp16",):
        if ds.get(section, {}).get("enabled"):
            raise ConfigError(f"{path}: {section} is not supported (use bf16 or fp32)")
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def frozen_config(ds: dict, dtype: torch.dtype) -> dict:
    """An optimizer-less stage-3 config for a frozen network (persistence 0: every weight stays partitioned)."""
    return {"train_micro_batch_size_per_gpu": ds["train_micro_batch_size_per_gpu"],
            "gradient_accumulation_steps": ds["gradient_accumulation_steps"],
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                  **{k: v for k, v in ds["zero_optimization"].items()
                                     if k.startswith("offload_param")}},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "steps_per_print": 1 << 30}


def place_partitioned(module: torch.nn.Module, ds: dict, device: torch.device, train: bool) -> torch.nn.Module:
    """ZeRO-3: turn a network built on the host into this rank's partitions on `device`, one weight at a time
    (`deepspeed.zero.Init` given an existing module: each weight is moved to the device, broadcast from rank 0 and
    cut to this rank's share before the next one moves), and move its buffers there. Nothing is then whole on the
    device but one weight, where handing a whole network to `deepspeed.initialize` moves it there whole first. A
    network that trains is first cast to the config's 16-bit dtype, as the engine would have cast it (its fp32
    master partitions are made from those weights either way); a frozen one keeps its dtype."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = next((d for key, d in half.items() if ds.get(key, {}).get("enabled")), None) if train else None
    if dtype is not None:
        for p in module.parameters():
            p.data = p.data.to(dtype)
    dtype = next(module.parameters()).dtype
    config = ds if train else frozen_config(ds, dtype)
    deepspeed.zero.Init(module=module, config_dict_or_path=config, dtype=dtype)
    for sub in module.modules():
        for key, buf in sub._buffers.items():
            if buf is not None:
                sub._buffers[key] = buf.to(device)
    return module


def partition_frozen(module: torch.nn.Module, ds: dict):
    """Wrap a frozen network in a stage-3 engine (ZeRO-3 runs only); otherwise return it as it is."""
    if zero_stage(ds) != 3:
        return module
    dtype = next(module.parameters()).dtype
    engine, *_ = deepspeed.initialize(model=module, config=frozen_config(ds, dtype))
    engine.eval()
    return engine


# --- the student ------------------------------------------------------------------------------------------------
def check_student_source(cfg: TrainConfig, family: Family, teacher_folder: Path,
                         inits: list[tuple[str, str]] = ()) -> None:
    """Refuse, before any weights load, a student init (or another network's init, `inits`: (config key, init)
    pairs) that its family says cannot be trained against the teacher (another shape or expert layout), and a
    choice of experts to train that the teacher does not have."""
    experts = family.experts(teacher_folder)
    wanted = cfg.student.experts
    if wanted is not None:
        unknown = [e for e in wanted if e not in experts]
        if unknown or not wanted:
            raise ConfigError(f"student.experts: {wanted} is not a non-empty subset of teacher {cfg.teacher!r}'s "
                              f"experts {list(experts)}")
    for key, init in [("student.init", cfg.student.init), *inits]:
        if init == "teacher":
            continue
        try:
            family.check_init(init, teacher_folder, key, cfg.teacher)
        except FamilyError as err:
            raise ConfigError(str(err)) from None


def _add_lora(family: Family, net: torch.nn.Module, lora: dict, what: str) -> None:
    """LoRA on every DiT of a velocity network (each of its experts), only the adapter trainable."""
    from peft import LoraConfig

    net.requires_grad_(False)
    targets = list(lora.get("target_modules") or family.lora_targets)
    try:
        family.add_lora(net, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
                                        target_modules=targets, init_lora_weights=True))
    except ValueError as err:
        raise ConfigError(f"{what}.target_modules {targets}: {err}") from None
    for name, p in net.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_settings(cfg: TrainConfig, family: Family) -> dict | None:
    """The student's LoRA as its files record it (rank, alpha, dropout, targets: the family's by default)."""
    lora = cfg.student.lora
    if lora is None:
        return None
    return {"r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "target_modules": list(lora.target_modules or family.lora_targets)}


def build_student(cfg: TrainConfig, teacher) -> torch.nn.Module:
    """The trainable student in fp32: a copy of the teacher's velocity network (its experts, where it has two) or
    another init, full or LoRA; with `student.experts`, only the experts named train."""
    family = teacher.family
    student = family.student_dit(teacher, cfg.student.init)
    # Master weights in fp32 whatever the teacher's dtype (DeepSpeed's bf16 mode keeps its own copy for compute).
    # diffusers warns on .to() for modules it prefers in fp32; they are fp32 here, so the warning is moot.
    with quiet_diffusers():
        student = student.to(torch.float32).train()
    if cfg.student.gradient_checkpointing:
        family.enable_gradient_checkpointing(student)
    lora = cfg.student.lora
    if lora is None:
        student.requires_grad_(True)
    else:
        _add_lora(family, student, {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                                    "target_modules": lora.target_modules}, "student.lora")
    if cfg.student.experts is not None:
        for component, expert in family.experts_of(student):
            if component not in cfg.student.experts:
                expert.requires_grad_(False)
    return student


def build_backbone(family: Family, init: str, teacher, gradient_checkpointing: bool = False,
                   lora: dict | None = None) -> torch.nn.Module:
    """A trainable fp32 copy of the teacher's velocity network (or of another same-shaped one) for a recipe's
    network (a discriminator backbone, a critic), optionally with LoRA."""
    backbone = family.student_dit(teacher, init)
    with quiet_diffusers():
        backbone = backbone.to(torch.float32).train().requires_grad_(True)
    if gradient_checkpointing:
        family.enable_gradient_checkpointing(backbone)
    if lora is not None:
        _add_lora(family, backbone, {"rank": 16, "alpha": 16.0, **lora}, "recipe network lora")
    return backbone


def trainable(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


# --- EMA ----------------------------------------------------------------------------------------------------------
def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's share of a weight: its ZeRO-3 partition, or the whole tensor."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


class EMA:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ over the student's trainable weights, on each rank's local share."""

    def __init__(self, student: torch.nn.Module, ema: torch.nn.Module, decay: float):
        names = {n for n, _ in trainable(student)}
        ema_params = dict(ema.named_parameters())
        self.pairs = [(ema_params[n], p) for n, p in student.named_parameters() if n in names]
        self.names = sorted(names)
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        for e, p in self.pairs:
            local = _local(e)
            local.lerp_(_local(p).to(local.dtype), 1.0 - self.decay)


# --- whole weights from sharded ones --------------------------------------------------------------------------
def full_state_dict(module: torch.nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The named weights gathered whole on rank 0 (a collective under ZeRO-3: every rank must call it);
    other ranks get an empty dict."""
    module = getattr(module, "module", module)
    rank = rank_world()[0]
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if names is not None and name not in names:
            continue
        with GatheredParameters([p], modifier_rank=None, enabled=hasattr(p, "ds_id")):
            if rank == 0:
                out[name] = p.detach().to("cpu", copy=True).contiguous()
    return out


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set the named weights from whole tensors present on every rank (partitioned again under ZeRO-3)."""
    module = getattr(module, "module", module)
    params = dict(module.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise KeyError(f"weights {missing[:5]} are not in the network")
    for name, value in state.items():
        p = params[name]
        with GatheredParameters([p], modifier_rank=0, enabled=hasattr(p, "ds_id")):
            with torch.no_grad():
                p.data.copy_(value.to(p.dtype))
