"""How much memory one rank of a training run needs, before the run is launched (`distill plan`, and `distill train`'s
preflight on GPU).

Every figure comes from the run's own config and from how this project and DeepSpeed allocate memory:

  parameter counts  the DiT built from its config.json on the meta device (no weights are read); LoRA weights from
                    the Linear layers the adapter targets; the recipe's own networks as its `plan()` counts them
  model states      per trainable network (the student and the recipe's) and ZeRO stage, as DeepSpeed 0.19 allocates
                    them: weights (bf16 with "bf16": {"enabled": true}, else fp32), gradients (whole at stages 0/1,
                    this rank's partition at 2/3), fp32 master weights (a copy whenever stage >= 1, or bf16 is on;
                    none at stage 3 in fp32), optimizer states (AdamW: 2 fp32 moments; RMSProp: 1), partitioned over
                    the ranks at stage >= 1; moved to CPU by offload_optimizer / offload_param
  frozen networks   the teacher's DiT in its dtype (when the recipe reads it; freed otherwise) and the student's EMA copy,
                    which is an fp32 deep copy of the whole student (LoRA base weights included); both partitioned
                    over the ranks under ZeRO-3 (distill.networks.partition_frozen)
  DeepSpeed buffers gradient buckets of `reduce_bucket_size` elements (two with overlap_comm at stage 1/2, one at
                    stage 3), and at stage 3 the gathered weights of the block being run and the one prefetched
  activations       one DiT forward (and backward) traced on the meta device at the run's real shapes: the peak bytes
                    of live tensors, with attention counted as FlashAttention keeps it (q, k, v, output, log-sum-exp);
                    traced at depth 1 and 2 and extrapolated linearly to the full depth; divided by the
                    sequence-parallel degree (Ulysses splits every token-wise tensor)
  build peak        ZeRO-0/1/2: before the engines partition anything, every rank holds the teacher, the fp32 student,
                    its fp32 EMA copy (and the recipe's networks) whole. ZeRO-3 (distill.build's partitioned build):
                    the teacher's DiT, loaded whole, moves to the host, and each network is built there and placed as
                    this rank's partitions one weight at a time, so on a GPU the build peak is the teacher as loaded;
                    on CPU, where the host is the device, it is the teacher and the largest network whole beside the
                    weights placed so far (gradients and Adam's moments appear at the first step). Checked on 2 CPU
                    ranks at the 1.3B teacher's width (scripts/measure_memory.py, docs/memory.md)
  fixed overheads   on GPU an allowance for the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation
                    (assumptions, named as such); on CPU the caller passes the process's own baseline

Assumptions stated once: ZeRO partitions over all ranks (with sequence parallelism too: DeepSpeed-Ulysses shards
ZeRO over the sequence-data-parallel group); the peak is the larger of the build peak and the training peak, and the
training peak counts every model state, every buffer and the largest phase's activations at once.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from distill.core.config import CONFIG_DIR, ConfigError
from distill.recipes import make_recipe
from distill.students.base import DitShape, RecipePlan
from distill.teachers import registry
from distill.teachers.base import VideoFactors
from distill.teachers.config import load_teacher_config
from distill.train_config import TrainConfig, deepspeed_path

GIB = 1 << 30
# GPU allowances (not measured here: no GPU has been lent yet; scripts/gpu_check.py measures them on the first one).
CUDA_CONTEXT_BYTES = int(0.75 * GIB)  # CUDA context, cuBLAS workspace, NCCL communicator buffers
FRAGMENTATION = 0.05  # the caching allocator's reserved-over-allocated margin, as a fraction of the peak
# DeepSpeed's defaults when the JSON leaves a key out (deepspeed/runtime/zero/config.py).
DS_DEFAULTS = {"reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
               "stage3_prefetch_bucket_size": 50_000_000, "stage3_param_persistence_threshold": 100_000,
               "overlap_comm": None}  # overlap_comm: DeepSpeed turns it on for stage 3 only
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# --- the networks' shapes -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherShape:
    """What the planner reads of a teacher, without weights: its family, one expert's DiT config, the VAE's
    (temporal, spatial) compression, and how many experts share that shape."""

    family: str
    dit: dict
    factors: tuple[int, int]
    experts: int = 1


def teacher_shape(cfg: TrainConfig) -> TeacherShape:
    """From the teacher's folder when it is here (a local folder, builtin:NAME, or the Hugging Face cache), else
    from configs/transformers/<hub id>.json (a copy of the published configs: `family`, `transformer`, `vae`,
    `experts`) for a hub teacher that is not downloaded."""
    from distill.teachers.resolve import TeacherNotFound, resolve

    tcfg = load_teacher_config(cfg.teacher)
    try:
        if tcfg.source.startswith("builtin:") or Path(tcfg.source).expanduser().exists():
            folder = resolve(tcfg.source, tcfg.revision, tcfg.family)
        else:  # a hub id: the local cache only (a plan never downloads)
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(tcfg.source, revision=tcfg.revision, local_files_only=True,
                                            allow_patterns=["*/config.json", "model_index.json"]))
    except (TeacherNotFound, OSError, ValueError):
        shipped = CONFIG_DIR / "transformers" / f"{tcfg.source.replace('/', '--')}.json"
        if not shipped.is_file():
            raise ConfigError(f"teacher {cfg.teacher!r}: its folder is not here and {shipped} does not exist; the "
                              f"planner needs the DiT's transformer/config.json (download the teacher, or copy the "
                              f"config there)") from None
        data = json.loads(shipped.read_text())
        family = registry.family(tcfg.family or data["family"])
        return TeacherShape(family.name, data["transformer"],
                            (data["vae"]["scale_factor_temporal"], data["vae"]["scale_factor_spatial"]),
                            int(data.get("experts", 1)))
    family = registry.family(tcfg.family) if tcfg.family else registry.family_of(folder)
    f = family.video_factors(folder)
    return TeacherShape(family.name, family.dit_config(folder), (f.temporal, f.spatial), len(family.experts(folder)))


def lora_params(model: torch.nn.Module, rank: int, targets: list[str]) -> int:
    """Weights peft adds for LoRA rank r on the Linear layers whose names end in one of `targets`: r·(in + out)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


@dataclass(frozen=True)
class Shapes:
    """What the planner needs to know about the networks, all counted from the DiT's config."""

    teacher: TeacherShape
    dit: dict  # the teacher's transformer config.json
    params: int  # the DiT's parameters
    block_params: int  # one transformer block's
    small_params: int  # weights under ZeRO-3's persistence threshold (kept whole on every rank)
    lora: int  # LoRA weights at the run's rank and targets (0: full fine-tuning)
    recipe: RecipePlan  # the recipe's own networks and the passes of its phases
    reads: tuple[str, ...]  # the frozen networks its losses read ("teacher", "ema")
    factors: tuple[int, int]  # the VAE's (temporal, spatial) compression
    latent: tuple[int, int, int, int]  # [C, F, H, W] of one clip
    tokens: int  # video tokens of one clip
    text_tokens: int
    heads: int  # one DiT's attention heads, depth (blocks), token width and largest weight
    depth: int
    width: int
    largest_weight: int


def shapes(cfg: TrainConfig, teacher: TeacherShape | None = None, lora_rank: int | None = -1) -> Shapes:
    """`lora_rank` -1: the config's LoRA (or none); None: no LoRA; N: LoRA rank N on the config's targets. Every
    network copied from the teacher's velocity network counts all its experts."""
    teacher = teacher or teacher_shape(cfg)
    family, dit, experts = registry.family(teacher.family), teacher.dit, teacher.experts
    tcfg = load_teacher_config(cfg.teacher)
    model = family.meta_dit(dit)
    params = experts * sum(p.numel() for p in model.parameters())
    layers = family.dit_blocks(model)
    block = sum(p.numel() for p in layers[0].parameters())
    threshold = DS_DEFAULTS["stage3_param_persistence_threshold"]
    small = experts * sum(p.numel() for p in model.parameters() if p.numel() < threshold)
    lora_cfg = cfg.student.lora
    if lora_rank == -1:
        lora_rank = lora_cfg.rank if lora_cfg is not None else None
    targets = list((lora_cfg.target_modules if lora_cfg is not None else None) or family.lora_targets)
    lora = experts * lora_params(model, lora_rank, targets) if lora_rank is not None else 0
    recipe = make_recipe(cfg, tcfg, family, dit, experts, VideoFactors(*teacher.factors, family.patch(dit)))
    if not getattr(recipe, "trains_student", True):
        raise ConfigError(f"recipe {cfg.recipe.name!r} trains no student DiT, only fresh networks of its own "
                          f"(students/base.py trains_student), and the planner counts DiT passes only: it has no "
                          f"plan for this run (its memory is the fresh network's and the teacher VAE's decode)")
    output = sum(p.numel() if isinstance(p, torch.nn.Parameter) else sum(q.numel() for q in p.parameters())
                 for p in family.dit_output(model))
    recipe_plan = recipe.plan(DitShape(params=params, block_params=block, depth=len(layers), dim=family.width(dit),
                                       heads=family.attention_heads(dit), frozen_output_params=experts * output,
                                       lora_per_rank=experts * lora_params(model, 1, list(family.lora_targets))))
    v = tcfg.video
    temporal, spatial = teacher.factors
    latent = (family.latent_channels(dit), (v.frames - 1) // temporal + 1, v.height // spatial, v.width // spatial)
    pt, ph, pw = family.patch(dit)
    tokens = (latent[1] // pt) * (latent[2] // ph) * (latent[3] // pw)
    return Shapes(teacher=teacher, dit=dit, params=params, block_params=block, small_params=small, lora=lora,
                  recipe=recipe_plan, reads=tuple(recipe.reads), factors=tuple(teacher.factors), latent=latent,
                  tokens=tokens, text_tokens=tcfg.max_sequence_length, heads=family.attention_heads(dit),
                  depth=len(layers), width=family.width(dit),
                  largest_weight=max(p.numel() for p in model.parameters()))


# --- activations: one forward (and backward) traced on the meta device ------------------------------------------
class _FlashAttention(torch.autograd.Function):
    """What FlashAttention keeps for backward: q, k, v, the output and an fp32 log-sum-exp per query (no L x L
    matrix). Meta tensors only: it computes nothing."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FlashAttention.apply(query, key, value)


class _LiveBytes:
    """Peak bytes of live tensor storages created while active (a TorchDispatchMode; meta tensors cost nothing)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.multiprocessing.reductions import StorageWeakRef

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        s = t.untyped_storage()
                        if s._cdata not in outer.live:
                            outer.live[s._cdata] = (StorageWeakRef(s), s.nbytes())
                            outer.now += s.nbytes()
                for key in [k for k, (ref, _) in outer.live.items() if ref.expired()]:
                    outer.now -= outer.live.pop(key)[1]
                outer.peak = max(outer.peak, outer.now)
                return out

        self.mode, self.live, self.now, self.peak = Mode(), {}, 0, 0


@functools.lru_cache(maxsize=64)
def _trace(family_name: str, dit_json: str, layers: int, batch: int, latent: tuple, text_tokens: int, dtype: str,
           checkpointing: bool, grad: bool) -> int:
    family = registry.family(family_name)
    dit = json.loads(dit_json)
    torch_dtype = getattr(torch, dtype)
    model = family.meta_dit(dit, layers, torch_dtype)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train(grad)
    x = torch.empty(batch, *latent, device="meta", dtype=torch_dtype, requires_grad=grad)
    inputs = family.dit_inputs(dit, x, text_tokens)
    live = _LiveBytes()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _flash_sdpa
    try:
        with torch.set_grad_enabled(grad), live.mode:
            out = model(**inputs, return_dict=False)[0]
            if grad:  # weight gradients go to DeepSpeed's buckets (counted there); the input's drive the backward
                torch.autograd.grad(out.float().pow(2).mean(), x)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    return live.peak


def activation_bytes(family: str, dit: dict, layers: int, batch: int, latent: tuple, text_tokens: int, dtype: str,
                     checkpointing: bool, grad: bool) -> int:
    """Peak activation bytes of one DiT pass: traced at depth 1 and 2, extrapolated linearly (each block adds the
    same saved tensors, or with checkpointing the same saved input). With two experts a pass runs each sample
    through one of them, so one DiT's activations for the whole batch are what a pass keeps."""
    key = json.dumps(dit, sort_keys=True)
    one = _trace(family, key, 1, batch, tuple(latent), text_tokens, dtype, checkpointing, grad)
    if layers == 1:
        return one
    two = _trace(family, key, 2, batch, tuple(latent), text_tokens, dtype, checkpointing, grad)
    return one + (layers - 1) * max(0, two - one)


# --- settings and the estimate -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The knobs that decide memory; `settings(cfg)` reads them from a run config and its DeepSpeed JSON."""

    stage: int
    bf16: bool
    offload_optimizer: bool
    offload_param: bool
    reduce_bucket: int
    overlap_comm: bool
    prefetch_bucket: int
    lora_rank: int | None
    checkpointing: bool
    sequence_parallel: int
    batch: int
    optimizer: str
    teacher_dtype: str
    deepspeed: str


def settings(cfg: TrainConfig, ds: dict | None = None) -> Settings:

    if ds is None:
        ds = json.loads(deepspeed_path(cfg.deepspeed).read_text())
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    overlap = zero.get("overlap_comm", DS_DEFAULTS["overlap_comm"])
    tdtype = cfg.teacher_dtype or load_teacher_config(cfg.teacher).dtype
    optimizer = ds.get("optimizer", {}).get("type", cfg.optim.name).lower()
    return Settings(
        stage=stage, bf16=bool(ds.get("bf16", {}).get("enabled")),
        offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme"),
        offload_param=zero.get("offload_param", {}).get("device", "none") in ("cpu", "nvme"),
        reduce_bucket=int(float(zero.get("reduce_bucket_size", DS_DEFAULTS["reduce_bucket_size"]))),
        overlap_comm=bool(stage == 3 if overlap is None else overlap),
        prefetch_bucket=int(float(zero.get("stage3_prefetch_bucket_size", DS_DEFAULTS["stage3_prefetch_bucket_size"]))),
        lora_rank=cfg.student.lora.rank if cfg.student.lora is not None else None,
        checkpointing=cfg.student.gradient_checkpointing,
        sequence_parallel=int(getattr(getattr(cfg, "parallel", None), "sequence", 1)),
        batch=cfg.data.batch_size, optimizer=optimizer, teacher_dtype=tdtype, deepspeed=str(cfg.deepspeed))


@dataclass
class Item:
    name: str
    bytes: int
    note: str = ""
    kind: str = "state"  # state | buffer | activation | overhead


@dataclass
class Plan:
    items: list[Item]  # the training peak's parts, per rank
    build_peak: int  # per rank, before the engines partition anything
    build_items: list[Item]
    capacity: int
    gpus: int
    settings: Settings
    device: str
    suggestions: list[str] = field(default_factory=list)

    @property
    def train_peak(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def total(self) -> int:
        return max(self.train_peak, self.build_peak)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def headroom(self) -> int:
        return self.capacity - self.total

    def model_states(self) -> int:
        return sum(i.bytes for i in self.items if i.kind == "state")

    def largest(self, n: int = 3) -> list[Item]:
        pool = self.items if self.train_peak >= self.build_peak else self.build_items
        return sorted(pool, key=lambda i: -i.bytes)[:n]

    def table(self) -> str:
        s = self.settings
        lines = [f"per-rank memory plan: {self.gpus} x {self.capacity / GIB:.1f} GiB ({self.device}); ZeRO-{s.stage}"
                 f"{' bf16' if s.bf16 else ' fp32'}{', offload optimizer' if s.offload_optimizer else ''}"
                 f"{', offload params' if s.offload_param else ''}; "
                 f"{'LoRA r=' + str(s.lora_rank) if s.lora_rank else 'full fine-tuning'}; gradient checkpointing "
                 f"{'on' if s.checkpointing else 'off'}; sequence parallel {s.sequence_parallel}; batch {s.batch}/rank",
                 f"{'item':<44} {'GiB':>9}  note"]
        for i in self.items:
            lines.append(f"{i.name:<44} {i.bytes / GIB:9.2f}  {i.note}")
        lines.append(f"{'= training peak':<44} {self.train_peak / GIB:9.2f}")
        lines.append(f"{'build peak (while the networks are built)':<44} {self.build_peak / GIB:9.2f}  "
                     + "; ".join(f"{i.name} {i.bytes / GIB:.2f}" for i in self.build_items))
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"total {self.total / GIB:.2f} GiB of {self.capacity / GIB:.2f}: {verdict}, headroom "
                     f"{self.headroom / GIB:+.2f} GiB")
        lines += [f"  would fit: {s}" for s in self.suggestions]
        return "\n".join(lines)


def estimate(cfg: TrainConfig, shp: Shapes, s: Settings, gpus: int, capacity: int, device: str = "cuda",
             overhead: int | None = None) -> Plan:
    """Per-rank memory of `cfg` at settings `s` on `gpus` ranks of `capacity` bytes each."""
    if gpus < 1:
        raise ConfigError(f"--gpus {gpus}: need at least 1")
    sp = s.sequence_parallel
    heads = shp.heads
    if gpus % sp:
        raise ConfigError(f"parallel.sequence={sp} does not divide the {gpus} GPUs")
    if heads % sp:
        raise ConfigError(f"parallel.sequence={sp} does not divide the DiT's {heads} attention heads")
    n, w = gpus, (2 if s.bf16 else 4)
    tb = DTYPE_BYTES[s.teacher_dtype]
    shard = n if s.stage == 3 else 1  # weights
    items: list[Item] = []

    def trainable_states(name: str, total: int, train: int) -> None:
        part = n if s.stage >= 1 else 1
        where = " (on CPU)" if s.offload_param and s.stage == 3 else ""
        items.append(Item(f"{name}: weights", 0 if where else w * total // shard,
                          f"{total / 1e9:.3f} B params x {w} B" + (f" / {shard} ranks" if shard > 1 else "") + where))
        if s.stage in (0, 1):
            grads = w * train
        else:
            grads = w * train // n
        items.append(Item(f"{name}: gradients", grads, f"{train / 1e9:.3f} B trainable x {w} B"
                          + (f" / {n}" if s.stage >= 2 else "")))
        master = 4 * train // part if (s.bf16 or s.stage in (1, 2)) else 0
        moments = {"adamw": 2, "adam": 2, "rmsprop": 1}.get(s.optimizer, 2)
        states = 4 * moments * train // part
        off = s.offload_optimizer
        items.append(Item(f"{name}: fp32 master weights", 0 if off else master,
                          ("on CPU" if off else (f"/ {part}" if part > 1 else "")) if master else
                          "none (fp32 weights are the master copy)"))
        items.append(Item(f"{name}: optimizer states", 0 if off else states,
                          f"{s.optimizer}: {moments} fp32 moment(s)" + (" on CPU" if off else
                                                                         (f" / {part}" if part > 1 else ""))))

    student = shp.params + shp.lora
    student_train = shp.lora if s.lora_rank else shp.params
    trainable_states("student", student, student_train)
    extra = {net.name: net for net in shp.recipe.networks}
    for net in extra.values():
        if net.trains:
            trainable_states(net.name, net.params, net.params - net.frozen_params)
        else:
            items.append(Item(f"{net.name} (frozen, fp32)", 4 * net.params // shard,
                              f"/ {shard}" if shard > 1 else ""))
    if "teacher" in shp.reads:
        items.append(Item("teacher DiT (frozen)", tb * shp.params // shard,
                          f"{s.teacher_dtype}" + (f" / {shard}" if shard > 1 else "")))
    if cfg.student.ema_decay is not None:
        items.append(Item("student EMA (fp32 copy)", 4 * student // shard,
                          "the whole student, LoRA base included" + (f" / {shard}" if shard > 1 else "")))
    # DeepSpeed buffers
    nets = 1 + sum(net.trains for net in extra.values())
    if s.stage in (1, 2):
        buckets = s.reduce_bucket * w * (2 if s.overlap_comm else 1)
        items.append(Item("gradient buckets", nets * buckets, f"reduce_bucket_size {s.reduce_bucket:.3g} x {w} B"
                          f"{' x 2 (overlap_comm)' if s.overlap_comm else ''}" + (f" x {nets} engines" if nets > 1 else
                                                                                 ""), "buffer"))
    if s.stage == 3:
        items.append(Item("gradient bucket", nets * s.reduce_bucket * w,
                          f"reduce_bucket_size {s.reduce_bucket:.3g} x {w} B" + (f" x {nets} engines" if nets > 1
                                                                                 else ""), "buffer"))
        gathered = (shp.block_params + min(s.prefetch_bucket, shp.block_params)) * max(w, tb)
        items.append(Item("ZeRO-3 gathered weights", gathered, "the running block whole, plus up to stage3_prefetch_bucket_size prefetched",
                          "buffer"))
    # activations: the largest phase
    latent, L = shp.latent, shp.tokens
    adt = "bfloat16" if s.bf16 else "float32"
    layers = shp.depth
    b = s.batch

    def act(batch, dtype, grad, depth=layers, ckpt=s.checkpointing):
        return activation_bytes(shp.teacher.family, shp.dit, depth, batch, latent, shp.text_tokens, dtype,
                                ckpt and grad, grad) // sp

    def dtype_of(network: str) -> str:
        return {"teacher": s.teacher_dtype, "ema": "float32"}.get(network, adt)

    phases = {}
    for description, passes in shp.recipe.phases.items():
        phases[description] = sum(act(p.batch * b, dtype_of(p.network), p.grad,
                                      (extra[p.network].depth if p.network in extra else None) or layers)
                                  for p in passes)
    phase, peak = max(phases.items(), key=lambda kv: kv[1])
    items.append(Item("activations", peak, f"{phase}; {b} x {L} tokens{f' / {sp} (sequence parallel)' if sp > 1 else ''}"
                      f", checkpointing {'on' if s.checkpointing else 'off'}", "activation"))
    if sp > 1:  # Ulysses re-shards q, k, v and the output through all-to-all buffers of the same size
        items.append(Item("Ulysses all-to-all buffers", 4 * b * L * shp.width * w // sp, "q, k, v, output",
                          "buffer"))
    # build peak (distill.build)
    largest_weight = shp.largest_weight
    if s.stage == 3:  # networks built on the host and placed as partitions one weight at a time
        build = [Item("teacher DiT, as loaded", tb * shp.params),
                 Item("one weight whole while it is partitioned", 4 * largest_weight)]
        if device != "cuda":  # the host is the device: one network whole beside the weights placed so far
            whole = max([student] + [net.params for net in extra.values()])
            placed = [i for i in items if i.kind == "state" and not i.name.endswith(("gradients", "optimizer states"))]
            build += [Item("the network being placed (fp32)", 4 * whole), *placed]
    else:  # whole networks on every rank, and what deepspeed.initialize allocates before the first step
        build = [Item("teacher DiT", tb * shp.params), Item("student (fp32)", 4 * student),
                 Item("copy while casting", tb * shp.params)]
        if cfg.student.ema_decay is not None:
            build.append(Item("EMA (fp32)", 4 * student))
        for net in extra.values():
            build.append(Item(f"{net.name} (fp32)", 4 * net.params))
        build += [i for i in items if i.name.endswith("fp32 master weights") or i.name == "gradient buckets"]
    if device == "cuda":
        dynamic = sum(i.bytes for i in items)
        items.append(Item("allocator fragmentation", int(FRAGMENTATION * dynamic),
                          f"{FRAGMENTATION:.0%} allowance (assumption)", "overhead"))
    fixed = overhead if overhead is not None else (CUDA_CONTEXT_BYTES if device == "cuda" else 0)
    items.append(Item("fixed overhead", fixed, "CUDA context, cuBLAS/NCCL workspaces (allowance)" if device == "cuda"
                      and overhead is None else "measured process baseline", "overhead"))
    build.append(Item("fixed overhead", fixed))
    return Plan(items, sum(i.bytes for i in build), build, capacity, gpus, s, device)


def plan(cfg: TrainConfig, gpus: int, gpu_memory_gib: float, device: str = "cuda", overhead: int | None = None,
         shp: Shapes | None = None, suggest: bool = True) -> Plan:
    """The run's plan, with the single changes (or pairs of them) that would make it fit when it does not."""
    shp = shp or shapes(cfg)
    s = settings(cfg)
    capacity = int(gpu_memory_gib * GIB)
    result = estimate(cfg, shp, s, gpus, capacity, device, overhead)
    if suggest and not result.fits:
        result.suggestions = suggestions(cfg, shp, s, gpus, capacity, device, overhead)
    return result


def _alternatives(cfg: TrainConfig, s: Settings, gpus: int, heads: int) -> list[tuple[str, dict]]:
    alt = []
    if not s.checkpointing:
        alt.append(("student.gradient_checkpointing=true", {"checkpointing": True}))
    if s.stage < 3:
        alt.append(("ZeRO-3 (deepspeed=configs/deepspeed/zero3-bf16.json)", {"stage": 3, "overlap_comm": True}))
    for sp in (2, 4, 8):
        if sp > s.sequence_parallel and gpus % sp == 0 and heads % sp == 0:
            alt.append((f"parallel.sequence={sp}", {"sequence_parallel": sp}))
    if s.lora_rank is None:
        alt.append(("student.lora='{rank: 64}'", {"lora_rank": 64}))
    if not s.offload_optimizer:
        alt.append(("ZeRO-3 with CPU offload (deepspeed=configs/deepspeed/zero3-bf16-offload.json)",
                    {"stage": 3, "offload_optimizer": True, "offload_param": True, "overlap_comm": True}))
    return alt


def suggestions(cfg: TrainConfig, shp: Shapes, s: Settings, gpus: int, capacity: int, device: str,
                overhead: int | None) -> list[str]:
    alt = _alternatives(cfg, s, gpus, shp.heads)
    found, train_only = [], []
    candidates = [[a] for a in alt] + [[a, b] for i, a in enumerate(alt) for b in alt[i + 1:]]
    for combo in candidates:
        names = tuple(c[0] for c in combo)
        if any(set(names) > set(f) for f, _ in found + train_only):
            continue  # a pair that contains a single change that works already
        changes = {}
        for _, c in combo:
            changes.update(c)
        trial_shp = shp if "lora_rank" not in changes else shapes(cfg, shp.teacher, changes["lora_rank"])
        trial = estimate(cfg, trial_shp, replace(s, **changes), gpus, capacity, device, overhead)
        if trial.fits:
            found.append((names, trial))
        elif trial.train_peak <= capacity:
            train_only.append((names, trial))
    out = [" + ".join(names) + f"  ({t.total / GIB:.1f} GiB, headroom {t.headroom / GIB:+.1f})" for names, t in found]
    if found:
        return out
    tried = "ZeRO-3, offload, LoRA, sequence parallelism, checkpointing (alone or in pairs)"
    if train_only:
        base = estimate(cfg, shp, s, gpus, capacity, device, overhead)
        least = min([base.build_peak] + [t.build_peak for _, t in train_only])  # as configured or with a change
        return [f"nothing among {tried}: the build peak (at least {least / GIB:.1f} GiB, while the networks are "
                f"built) exceeds {capacity / GIB:.0f} GiB; the training peak alone would fit "
                f"with " + " or ".join(" + ".join(n) + f" ({x.train_peak / GIB:.1f} GiB)" for n, x in train_only[:3])]
    return [f"nothing among {tried}"]


def refusal(p: Plan) -> str:
    """One line for a run that does not fit: the total and its largest items."""
    big = ", ".join(f"{i.name} {i.bytes / GIB:.1f} GiB" for i in p.largest())
    where = "building the networks" if p.build_peak > p.train_peak else "training"
    return (f"needs {p.total / GIB:.1f} GiB per GPU ({where}) but {p.gpus} x {p.capacity / GIB:.0f} GiB has "
            f"{p.capacity / GIB:.1f}; largest: {big}" + (f"; would fit: {p.suggestions[0]}" if p.suggestions else ""))
