"""`distill export`: a training checkpoint into a diffusers folder that the teacher family's stock pipeline samples
in few steps.

    OUT/
        model_index.json          the teacher's (its pipeline class, and a two-expert boundary), naming the scheduler
        transformer/              the student: student/ of a full run, or the LoRA base with the adapter fused in
        transformer_2/            (two-expert teachers) the student's low-noise expert, likewise
        scheduler/                the family's few-step scheduler (FlowMatchEulerDiscreteScheduler(stochastic_sampling=
                                  True) with the static shift and shift_terminal that land on the student's grid):
                                  per step it computes exactly the multistep consistency sampler (teachers.samplers)
        text_encoder/ tokenizer/ vae/ ...   copied from the teacher
        lora/pytorch_lora_weights.safetensors   (LoRA runs) the adapter alone, for `pipe.load_lora_weights`; with
                                                two experts the low-noise one's is lora/transformer_2/
        lora/<native>.safetensors               the same adapter(s) in the family's native key names, where it has
                                                them (ComfyUI and the family's own code)
        decoder/                  (--decoder) a distilled video decoder shipped beside the student: a VideoDecoder
                                  folder (teachers/decoders.py) made for these latents; the pipeline ignores it,
                                  `distill sample/eval` take it with --decoder OUT / decoder=OUT
        distill_teacher.json      the sampler and video defaults `distill sample` and `distill eval` pick up
        distill_export.json       where it came from (run, checkpoint, step, teacher, code version)
        README.md                 how to load and sample it

The folder is written next to OUT under a temporary name and renamed at the end: a failed export leaves nothing.
What it reads is verified first (every student safetensors file: its header, each tensor's size, that it opens), so
a truncated checkpoint is refused by name instead of exported; a full disk ends in one line (distill.core.disk).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

import yaml

from distill.core.config import ConfigError
from distill.core.hashing import checkpoint_hash
from distill.core.disk import DiskFull, free_bytes, is_disk_full, mount_of, size_of
from distill.teachers.base import FamilyError, dit_folder
from distill.teachers.resolve import check_weight_files
from distill.teachers.config import load_teacher_config
from distill.teachers.samplers import LEGACY_GRID

LORA_FILE = "pytorch_lora_weights.safetensors"


def _read_checkpoint(folder: Path) -> tuple[dict, dict]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"export: {str(folder / 'meta.json')!r} is not valid JSON ({err})") from None
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"export: checkpoint {str(folder)!r} is incomplete (no config.yaml)")
    config = yaml.safe_load(config_file.read_text()) or {}
    missing = [k for k in ("teacher", "sampler") if k not in meta]
    if missing:
        raise ConfigError(f"export: {str(folder / 'meta.json')!r} lacks the keys {missing}; it was not written by "
                          f"`distill train`, or by a version older than export")
    lora = (config.get("student") or {}).get("lora")
    weights = folder / ("lora" if lora else "student")
    expected = weights / (LORA_FILE if lora else "config.json")
    if not lora and not expected.is_file() and (weights / "transformer" / "config.json").is_file():
        expected = weights / "transformer" / "config.json"  # a student with experts: one folder each
    if not expected.is_file():
        kind = "a LoRA run (student.lora is set)" if lora else "a full fine-tuning run"
        raise ConfigError(f"export: checkpoint {str(folder)!r} is {kind} but {str(expected)!r} is missing; the "
                          f"checkpoint is incomplete")
    return meta, config


def _teacher(meta: dict, config: dict, folder: Path):
    """The teacher's config (for its video defaults and revision), its family and its local folder."""
    from distill.teachers.config import open_config
    from distill.teachers.resolve import TeacherNotFound

    source = meta["teacher"]
    try:
        tcfg = load_teacher_config(str(config.get("teacher") or source))
        if tcfg.source != source:  # the config file has changed since the run: the checkpoint's word wins
            tcfg = load_teacher_config(source)
    except ConfigError:
        tcfg = load_teacher_config(source)
    try:
        return (tcfg, *open_config(tcfg))
    except TeacherNotFound as err:
        raise ConfigError(f"export: the teacher of checkpoint {str(folder)!r} cannot be found: {err}") from None


def _lora_base(config: dict, teacher_folder: Path, component: str) -> Path:
    """The transformer folder an expert's LoRA was trained on: the teacher's, or the run's student.init's."""
    init = (config.get("student") or {}).get("init", "teacher")
    if init == "teacher":
        return teacher_folder / component
    base = Path(init) / component if (Path(init) / component / "config.json").is_file() else dit_folder(init)
    if base is None:
        raise ConfigError(f"export: the LoRA was trained on student.init {str(init)!r}, which is no longer a "
                          f"transformer folder (no config.json)")
    return base


# --- writing ----------------------------------------------------------------------------------------------------
def _readme(out_name: str, sampler: dict, tcfg, family, pipeline: str, lora: bool, experts: tuple[str, ...],
            meta: dict, folder: Path) -> str:
    steps = sampler["steps"]
    return f"""# {out_name}: a {steps}-step student distilled from `{meta['teacher']}`

Exported by `distill export` from `{folder}` (step {meta.get('step')}, recipe `{meta.get('recipe')}`).
A complete diffusers folder: stock `{pipeline}` samples it in {steps} steps, without classifier-free guidance.
Its scheduler does multistep consistency sampling (jump to the clean estimate, re-noise to the next level, repeat).

{family.readme(out_name, sampler, tcfg.video, tcfg.max_sequence_length, lora, experts)}
With this project's tools (they read `distill_teacher.json`, so the consistency sampler is picked automatically):

```bash
distill sample --teacher {out_name} --prompt "..." --out clip.mp4
distill eval --model student={out_name}@{steps} --out runs/eval
```
"""


def _copy_tree(src: Path, dst: Path) -> None:
    # Hub snapshots are symlinks into the blob store: copy what they point to.
    shutil.copytree(src, dst, symlinks=False)


def _student_layout(folder: Path, lora: bool, family, experts: tuple[str, ...]) -> dict[str, Path]:
    """Each expert's weights in a checkpoint (its LoRA file, or its transformer folder), refused by name when the
    checkpoint holds another number of experts than the teacher has."""
    if lora:
        found = family.lora_files(folder / "lora", experts)
    else:
        found = family.dit_folders(folder / "student", experts)
    want = [(e, path / "config.json" if not lora else path) for e, path in found.items()]
    missing = [str(path) for _, path in want if not path.is_file()]
    if missing:
        stored = sorted(p.parent.name for p in (folder / "student").glob("*/config.json")) if not lora else []
        raise ConfigError(f"export: checkpoint {str(folder)!r} does not hold the student's {len(experts)} expert(s) "
                          f"{list(experts)} that its teacher has: {missing} missing"
                          + (f" (it holds {stored})" if stored else ""))
    return found


def _check_weights(folder: Path, weights: dict[str, Path], lora: bool) -> None:
    """Every student weights file the export reads is whole before anything is written: its safetensors header
    parses, each tensor's bytes match its dtype and shape and lie inside the file, and safetensors opens it; a full
    student's config.json is JSON. A truncated copy or an interrupted save is refused by name, never exported."""
    from safetensors import safe_open

    from distill.teachers.resolve import IncompleteWeights, check_safetensors

    files = []
    for path in weights.values():
        if lora:
            files.append(path)
            continue
        try:
            json.loads((path / "config.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"export: {str(path / 'config.json')!r} in checkpoint {str(folder)!r} is not valid "
                              f"JSON ({err}); the checkpoint is damaged") from None
        found = sorted(path.glob("*.safetensors"))
        if not found:
            raise ConfigError(f"export: {str(path)!r} in checkpoint {str(folder)!r} holds no .safetensors weights; "
                              f"the checkpoint is incomplete")
        files += found
    for file in files:
        try:
            check_safetensors(file)
            with safe_open(str(file), "pt") as f:
                f.keys()
        except IncompleteWeights as err:
            raise ConfigError(f"export: checkpoint {str(folder)!r}: {str(err).split('; download')[0]}; export an "
                              f"intact checkpoint (--checkpoint step-N)") from None
        except Exception as err:  # safetensors' own SafetensorError: a header it cannot use
            raise ConfigError(f"export: checkpoint {str(folder)!r}: weights file {str(file)!r} does not load "
                              f"({err}); export an intact checkpoint (--checkpoint step-N)") from None


def _check_out(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """An export never replaces a run, a checkpoint, or a folder holding one, and `--overwrite` replaces only an
    earlier export (it has distill_export.json): nothing else is ever deleted."""
    from distill.checkpoint import RUN_MARKERS

    source = checkpoint.resolve()
    if out.exists() and (out.resolve() == source or out.resolve() in source.parents):
        raise ConfigError(f"export: --out {str(out)!r} holds the checkpoint being exported ({str(source)!r}); "
                          f"choose a folder that holds no checkpoint, such as "
                          f"{str(source.parent.parent / 'export')!r}")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ConfigError(f"export: --out {str(out)!r} is a file; choose a folder")
    runs = [m for m in RUN_MARKERS if (out / m).exists()] + (["meta.json"] if (out / "meta.json").exists() else [])
    if runs:
        raise ConfigError(f"export: --out {str(out)!r} is a training run or checkpoint (it has {runs}); an export "
                          f"never replaces one, with or without --overwrite")
    if not overwrite:
        raise ConfigError(f"export: {str(out)!r} already exists and is not empty; choose another --out or pass "
                          f"--overwrite")
    if not (out / "distill_export.json").is_file():
        raise ConfigError(f"export: --overwrite replaces an earlier export only, and {str(out)!r} is not one (no "
                          f"distill_export.json); choose another --out or empty it yourself")


# --- a run that trained no student (students/base.py `trains_student`): its fresh networks ----------------------
def _trains_no_student(folder: Path) -> bool:
    try:
        return json.loads((folder / "meta.json").read_text()).get("student") is False
    except (OSError, json.JSONDecodeError):
        return False  # _read_checkpoint names the problem


def _networks_readme(out_name: str, networks: dict[str, str], meta: dict, folder: Path) -> str:
    loads = []
    for name, qualified in networks.items():
        module, cls = qualified.rsplit(".", 1)
        loads.append(f"from {module} import {cls}\n{name} = {cls}.from_pretrained(\"{out_name}/{name}\")")
    names = ", ".join(f"`{n}/`" for n in networks)
    return f"""# {out_name}: {names} trained against `{meta['teacher']}`

Exported by `distill export` from `{folder}` (step {meta.get('step')}, recipe `{meta.get('recipe')}`). The run trained
no student DiT; it trained the network(s) here, each a diffusers `ModelMixin` folder (config.json + safetensors).

```python
{chr(10).join(loads)}
```

A video decoder takes what the teacher's VAE decode takes, the pipeline's normalised latents, and gives uint8 video
[B, T, H, W, 3]; beside a stock diffusers pipeline of the teacher (or of a distilled student):

```python
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("TEACHER_OR_STUDENT_FOLDER")
latents = pipe("a prompt", output_type="latent").frames   # skips the pipeline's VAE decode
video = decoder.decode(latents)                            # uint8 [B, T, H, W, 3]
for frames in decoder.decode_stream(latents):              # or frame by frame as latent frames arrive
    ...
```
"""


def _staging_prefix(out: Path) -> str:
    """The staging folder's name, less the pid: it names the host, so that only this host's dead exports are
    cleaned up (a pid means nothing on another host sharing the folder)."""
    return f".tmp-{out.name}-{socket.gethostname()}-"


def remove_killed_staging(out: Path) -> None:
    """Remove the staging folders beside `out` of this host's exports that were killed (`kill -9`, an OOM kill):
    nothing else ever would, and each holds up to a whole export. A live export's folder is left alone."""
    prefix = _staging_prefix(out)
    for stale in out.parent.glob(glob.escape(prefix) + "*"):
        pid = stale.name[len(prefix):]
        if not pid.isdigit() or _running(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)
        warnings.warn(f"removed {str(stale)!r}, the partial output of an export (pid {pid}) that was killed")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def _staged(out: Path, needed: int):
    """A fresh `.tmp-` folder beside `out` to write the export into; on success it replaces `out` (an earlier export,
    `_check_out` has made sure), on any failure it is removed, and a full disk ends in one line naming the disk and
    the `needed` bytes (distill.core.disk)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_killed_staging(out)
    tmp = out.parent / f"{_staging_prefix(out)}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".old-{out.name}-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException as err:
        if is_disk_full(err):
            free = free_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise DiskFull(tmp, mount_of(tmp), free, needed, "the export") from err
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_networks(folder: Path, out: Path, overwrite: bool) -> Path:
    """OUT/<name>/ for each fresh network the checkpoint holds, README.md, distill_export.json."""
    meta = json.loads((folder / "meta.json").read_text())
    networks = meta.get("networks") or {}
    if not networks:
        raise ConfigError(f"export: checkpoint {str(folder)!r} trained no student and names no networks in its "
                          f"meta.json; nothing to export")
    missing = [n for n in networks if not (folder / n / "config.json").is_file()]
    if missing:
        raise ConfigError(f"export: checkpoint {str(folder)!r} lacks the network folders {missing} (config.json); "
                          f"the checkpoint is incomplete")
    _check_weights(folder, {n: folder / n for n in networks}, lora=False)
    out = out.expanduser().absolute()
    _check_out(out, folder, overwrite)
    with _staged(out, sum(size_of(folder / n) for n in networks)) as tmp:
        for name in networks:
            _copy_tree(folder / name, tmp / name)
        provenance = {"schema": "distill.export/1", "checkpoint": str(folder.resolve()), "step": meta.get("step"),
                      "teacher": meta["teacher"], "teacher_hash": meta.get("teacher_hash"),
                      "recipe": meta.get("recipe"), "student": None, "networks": networks,
                      "code_version": meta.get("code_version"), "fingerprint": meta.get("fingerprint")}
        (tmp / "distill_export.json").write_text(json.dumps(provenance, indent=1) + "\n")
        (tmp / "README.md").write_text(_networks_readme(out.name, networks, meta, folder))
    return out


def export(run: str | Path, out: Path, checkpoint: str = "latest", steps: int | None = None,
           overwrite: bool = False, decoder: str | Path | None = None) -> Path:
    """Write the student of a run (its latest checkpoint, or `checkpoint`) as a diffusers folder at `out` that the
    teacher family's stock pipeline samples; `decoder` (a decoder folder or a decoder run's export) ships in
    OUT/decoder/ beside it, checked against the teacher's latents first."""
    from distill.checkpoint import find

    try:
        folder = find(run, checkpoint)
    except ConfigError as err:
        raise ConfigError(f"export: {err}") from None
    if _trains_no_student(folder):
        if decoder is not None:
            raise ConfigError(f"export: --decoder ships a decoder beside a student, and {str(folder)!r} trained none")
        return _export_networks(folder, Path(out), overwrite)
    meta, config = _read_checkpoint(folder)
    lora = bool((config.get("student") or {}).get("lora"))
    sampler = dict(meta["sampler"])
    if sampler.get("name") != "consistency":
        raise ConfigError(f"export: checkpoint {str(folder)!r} was trained for the {sampler.get('name')!r} sampler; "
                          f"export writes the consistency sampler only")
    # a checkpoint written before the grid was a choice has no "grid": it was trained, and samples, on the legacy one
    grid = sampler.get("grid", LEGACY_GRID)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"export: steps must be at least 1, got {steps}")
        if not isinstance(grid, str) and len(grid) != steps:
            raise ConfigError(f"export: checkpoint {str(folder)!r} was trained on the explicit {len(grid)}-level grid "
                              f"{grid}; --steps {steps} has no levels (export it at {len(grid)} steps)")
        sampler["steps"] = steps
    sampler = {"name": "consistency", "steps": int(sampler["steps"]), "guidance": 1.0,
               "shift": float(sampler["shift"]), "grid": grid}
    tcfg, family, teacher = _teacher(meta, config, folder)
    from distill.checkpoint import check_teacher

    teacher_hash = checkpoint_hash(teacher)
    check_teacher(folder, meta, teacher_hash, "export")  # the teacher's VAE and encoder go into the export
    index = json.loads((teacher / "model_index.json").read_text())
    experts = family.experts(teacher)
    weights = _student_layout(folder, lora, family, experts)
    _check_weights(folder, weights, lora)
    shipped = _check_shipped_decoder(decoder, family, teacher)

    out = Path(out).expanduser().absolute()
    _check_out(out, folder, overwrite)
    needed = size_of(teacher) + sum(size_of(p) for p in weights.values())  # about: the teacher's parts and student
    needed += size_of(shipped) if shipped is not None else 0
    with _staged(out, needed) as tmp:
        for name, entry in index.items():  # the teacher's other components: text encoder, tokenizer, VAE, ...
            if name in (*experts, "scheduler") or not isinstance(entry, list) or entry[0] is None:
                continue
            if not (teacher / name).is_dir():
                raise ConfigError(f"export: teacher folder {str(teacher)!r} lacks {name}/")
            check_weight_files(teacher / name)  # a truncated teacher file is named, not copied
            _copy_tree(teacher / name, tmp / name)
        for component, path in weights.items():
            if lora:
                try:
                    family.fuse_lora(_lora_base(config, teacher, component), path, tmp / component, component)
                except FamilyError as err:
                    raise ConfigError(f"export: {err}") from None
                dest = tmp / "lora" / path.relative_to(folder / "lora")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
                if family.native_lora_file:
                    family.write_native_lora(path, tmp / "lora" / family.native_lora_name(component, len(experts)))
            else:
                _copy_tree(path, tmp / component)
        try:
            scheduler = family.few_step_scheduler(sampler["shift"], teacher, sampler["steps"], grid)
        except FamilyError as err:
            raise ConfigError(f"export: {err}") from None
        scheduler.save_pretrained(tmp / "scheduler")
        index["scheduler"] = ["diffusers", type(scheduler).__name__]
        index.update(family.pipeline_config(teacher))
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if shipped is not None:  # beside the pipeline's components, not in model_index: stock loading ignores it
            _copy_tree(shipped, tmp / "decoder")
        defaults = {"sampler": sampler, "video": tcfg.video.model_dump(), "negative_prompt": tcfg.negative_prompt,
                    "max_sequence_length": tcfg.max_sequence_length}
        (tmp / "distill_teacher.json").write_text(json.dumps(defaults, indent=2) + "\n")
        provenance = {"schema": "distill.export/1", "checkpoint": str(folder.resolve()), "step": meta.get("step"),
                      "teacher": meta["teacher"], "teacher_hash": teacher_hash, "teacher_revision": tcfg.revision,
                      "recipe": meta.get("recipe"), "student": "lora" if lora else "full",
                      "code_version": meta.get("code_version"), "fingerprint": meta.get("fingerprint"), "sampler": sampler, "family": family.name,
                      "experts": list(experts),
                      "decoder": None if shipped is None else {"source": str(shipped.resolve()),
                                                               "hash": checkpoint_hash(shipped)}}
        (tmp / "distill_export.json").write_text(json.dumps(provenance, indent=1) + "\n")
        (tmp / "README.md").write_text(_readme(out.name, sampler, tcfg, family, index["_class_name"], lora, experts,
                                               meta, folder) + (_decoder_readme(out.name) if shipped else ""))
    return out


def _check_shipped_decoder(decoder, family, teacher: Path) -> Path | None:
    """The folder of the decoder to ship (None without one), refused by name when it is not a VideoDecoder made for
    this teacher's latents or its weights do not verify."""
    if decoder is None:
        return None
    from distill.teachers.decoders import check_decoder

    factors = family.video_factors(teacher)
    try:
        shipped = check_decoder(decoder, family.latent_channels(family.dit_config(teacher)), factors.temporal,
                                factors.spatial)
    except ValueError as err:
        raise ConfigError(f"export: {err}") from None
    check_weight_files(shipped)
    return shipped


def _decoder_readme(out_name: str) -> str:
    return f"""
## The distilled decoder in `decoder/`

A small causal video decoder trained to reproduce the VAE's decode of these latents, several times faster (its
speed and the quality it costs: docs/recipes/decoder.md). Stock loading ignores it; to use it, take the pipeline's
latents and decode them with it:

```python
from diffusers import DiffusionPipeline
from distill.teachers.decoders import VideoDecoder
pipe = DiffusionPipeline.from_pretrained("{out_name}")
decoder = VideoDecoder.from_pretrained("{out_name}/decoder").eval()
latents = pipe("a prompt", output_type="latent").frames
video = decoder.decode(latents)                 # uint8 [B, T, H, W, 3]; decoder.decode_stream(latents) streams
```

`distill sample --teacher {out_name} --decoder {out_name}` and `distill eval --model s={out_name}@STEPS,decoder=
{out_name}` do the same.
"""
