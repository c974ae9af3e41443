"""`distill sample`: clips from a teacher (or a student export) as mp4, gif and a frame-grid png."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distill.commands import no_progress_bars
from distill.core.paths import check_output_dir, check_output_file
from distill.core.config import ConfigError
from distill.core.text import read_lines

from distill.teachers.resolve import DEFAULT_BUILTIN as DEFAULT_TEACHER
from distill.teachers.samplers import GRIDS

DEFAULT_COND_CACHE_TEXT = "$DISTILL_CACHE/conditioning, else $XDG_CACHE_HOME/distill/conditioning or " \
                          "~/.cache/distill/conditioning"


def default_cond_cache() -> Path:
    """The user's conditioning cache: shared by every `distill sample` call of this user, whatever its --out."""
    if os.environ.get("DISTILL_CACHE"):
        return Path(os.environ["DISTILL_CACHE"]).expanduser() / "conditioning"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "distill" / "conditioning"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample clips from a teacher and write mp4, gif and a frame-grid png",
        description="Sample clips from a teacher. Unset options take the teacher's own defaults (its config file, "
                    "or the defaults a shipped checkpoint carries). Example:\n  distill sample --teacher "
                    f"{DEFAULT_TEACHER} --prompt 'a red disc moving left slowly on a black background' "
                    "--steps 50 --seed 0 --out clip.mp4",
        epilog="Launched under torchrun with N ranks, every clip's tokens are split over the N ranks in every DiT "
               "forward (DeepSpeed-Ulysses sequence parallelism: one long clip spread over GPUs); the heads and the "
               "clip's tokens must divide by N. Rank 0 writes the files.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=DEFAULT_TEACHER,
                   help="a teacher config (configs/teachers/X.yaml or its name X), a pipeline folder, a hub id (online), "
                        f"or builtin:NAME (default {DEFAULT_TEACHER})")
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several clips")
    p.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    p.add_argument("--image", action="append", type=Path, default=[], metavar="PATH",
                   help="the first frame for an image-to-video teacher: one for every clip, or repeat once per "
                        "prompt (required by image-to-video checkpoints, refused by text-to-video ones)")
    p.add_argument("--last-image", action="append", type=Path, default=[], metavar="PATH",
                   help="the last frame, for a teacher that takes one (first-and-last-frame-to-video): as --image")
    p.add_argument("--negative-prompt", help="negative prompt for CFG (default: the teacher's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the teacher's, 50)")
    p.add_argument("--guidance", type=float, help="CFG scale; <= 1 turns CFG off")
    p.add_argument("--guidance-2", type=float, help="a two-expert teacher's low-noise CFG scale (the stock pipeline's "
                                                  "guidance_scale_2; default: the teacher's, else --guidance)")
    p.add_argument("--shift", type=float, help="timestep shift of the flow-matching schedule")
    p.add_argument("--sampler", choices=["euler", "unipc", "consistency"])
    p.add_argument("--grid", choices=list(GRIDS),
                   help="the consistency sampler's noise levels (default: a student export's own grid, else 'euler')")
    p.add_argument("--seed", type=int, default=0, help="seed of the first clip; clip i uses seed + i")
    p.add_argument("--frames", type=int, help="number of frames, 4k+1")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=int, default=8, help="clips sampled together")
    p.add_argument("--formats", default="mp4,gif,png",
                   help="comma-separated formats written next to --out (default mp4,gif,png)")
    p.add_argument("--decoder", type=Path, metavar="PATH",
                   help="decode with a distilled video decoder (a decoder folder, or the export of a decoder run: "
                        "docs/recipes/decoder.md) instead of the teacher's VAE")
    p.add_argument("--compile", action="store_true",
                   help="run the DiT (and a --decoder) under torch.compile (inductor); refused, saying why, where "
                        "this device cannot compile. The first batch pays the compile time")
    p.add_argument("--cond-cache", type=Path, default=None, metavar="DIR",
                   help="where prompt embeddings are kept between calls, one file per text and text encoder "
                        f"(default {DEFAULT_COND_CACHE_TEXT})")
    p.add_argument("--no-cond-cache", action="store_true",
                   help="keep prompt embeddings in memory for this call only (nothing read or written on disk)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, required=True,
                   help="output path (clip.mp4); several prompts give clip-0.mp4, clip-1.mp4, ...")
    p.set_defaults(func=run)


def read_prompts(prompt: list[str], prompts_file: Path | None) -> list[str]:
    prompts = list(prompt)
    if prompts_file:
        if not prompts_file.is_file():
            raise ConfigError(f"--prompts-file {str(prompts_file)!r} does not exist")
        prompts += read_lines(prompts_file, "--prompts-file")
    if not prompts:
        raise ConfigError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ConfigError(f"prompts at positions {empty} are empty; every prompt needs text")
    return prompts


def run(args) -> int:
    from distill.core.media import VIDEO_SUFFIXES, write_clip

    prompts = read_prompts(args.prompt, args.prompts_file)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    formats = [f".{f.strip().lstrip('.')}" for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats + [args.out.suffix] if f not in VIDEO_SUFFIXES]
    if bad:
        raise ConfigError(f"output format(s) {bad} unknown; accepted: {list(VIDEO_SUFFIXES)}")
    stems = [args.out] if len(prompts) == 1 else [args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}")
                                                   for i in range(len(prompts))]
    for stem in stems:  # first: a bad path fails in a second, not after the teacher has loaded and sampled
        for suffix in dict.fromkeys([args.out.suffix, *formats]):
            check_output_file(stem.with_suffix(suffix))
    if args.cond_cache is not None and args.no_cond_cache:
        raise ConfigError("--cond-cache and --no-cond-cache contradict each other; give one")
    cond_folder = None if args.no_cond_cache else (args.cond_cache or default_cond_cache())
    if cond_folder is not None:
        check_output_dir(cond_folder, "--cond-cache")

    from distill.teachers.config import load_teacher, load_teacher_config, open_config

    overrides = [f"{k}={v}" for k, v in (
        ("sampler.steps", args.steps), ("sampler.guidance", args.guidance), ("sampler.guidance_2", args.guidance_2),
        ("sampler.shift", args.shift),
        ("sampler.name", args.sampler), ("sampler.grid", args.grid),
        ("video.frames", args.frames), ("video.height", args.height),
        ("video.width", args.width), ("video.fps", args.fps), ("dtype", args.dtype), ("device", args.device),
    ) if v is not None]
    cfg = load_teacher_config(args.teacher, overrides)
    if args.negative_prompt is not None:
        cfg = cfg.model_copy(update={"negative_prompt": args.negative_prompt})
    v, s = cfg.video, cfg.sampler
    family, folder = open_config(cfg)
    if args.guidance_2 is not None and len(family.experts(folder)) < 2:
        raise ConfigError(f"--guidance-2 is the low-noise expert's CFG scale, and teacher {cfg.source!r} has one DiT")
    images, last_images = read_images(args.image, args.last_image, prompts, family, folder, cfg.source)
    family.check_video_size(v.frames, v.height, v.width, family.video_factors(folder))
    decoder_folder = None
    if args.decoder is not None:  # before any weights load: a decoder made for other latents is refused
        from distill.teachers.decoders import check_decoder

        factors = family.video_factors(folder)
        decoder_folder = check_decoder(args.decoder, family.latent_channels(family.dit_config(folder)),
                                       factors.temporal, factors.spatial)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # before any weights load: the split must be possible
        cfg = _check_sequence_split(cfg, family, folder, world)
    if args.compile:  # before any weights load: a device that cannot compile is refused, never run eager
        _check_compile(cfg.device)

    from tqdm.auto import tqdm

    if args.no_progress:
        no_progress_bars()

    rank = _join_sequence_group(world)
    teacher = load_teacher(cfg)
    if world > 1:
        import torch.distributed as dist

        teacher.shard_sequence(dist.group.WORLD)
    if args.compile:
        from distill.teachers.compiling import compile_dit

        compile_dit(teacher)
    decode = teacher.decode
    if decoder_folder is not None:
        from distill.teachers.decoders import load_decoder

        decoder = load_decoder(decoder_folder, teacher.device)
        if args.compile:
            from distill.teachers.compiling import compile_decoder

            compile_decoder(decoder)
        decode = decoder.decode
    from distill.teachers.conditioning import CondCache

    conditioning = CondCache(cond_folder)
    if rank == 0:
        print(f"teacher {cfg.source} on {teacher.device}: {len(prompts)} clip(s), {v.frames}x{v.height}x{v.width}, "
              f"{s.name} {s.steps} steps, guidance {s.guidance}, shift {s.shift}"
              + (f", grid {s.grid}" if s.name == "consistency" and s.grid is not None else "")
              + (f", each clip split over {world} ranks" if world > 1 else "")
              + (f", {'DiT and decoder' if decoder_folder else 'DiT'} compiled (the first batch pays the compile)"
                 if args.compile else "")
              + (f", decoded by {decoder_folder}" if decoder_folder is not None else ""), file=sys.stderr)
    seeds = [args.seed + i for i in range(len(prompts))]
    written = []
    for i in tqdm(range(0, len(prompts), args.batch_size), desc="clips", unit="batch",
                  disable=args.no_progress or rank != 0):
        chunk = prompts[i:i + args.batch_size]
        cond = conditioning.encode(teacher, chunk, cfg.negative_prompt if s.guidance > 1.0 else None)
        chunk_images = None if images is None else images[i:i + args.batch_size]
        chunk_last = None if last_images is None else last_images[i:i + args.batch_size]
        latents = teacher.sample(chunk, steps=s.steps, guidance=s.guidance, shift=s.shift,
                                 seed=seeds[i:i + args.batch_size], sampler=s.name, negative=cfg.negative_prompt,
                                 frames=v.frames, height=v.height, width=v.width, guidance_2=s.guidance_2,
                                 progress=not args.no_progress and rank == 0, grid=s.grid, cond=cond,
                                 images=chunk_images, last_images=chunk_last)
        if rank != 0:  # every rank computed the same clips; one writes them
            continue
        for j, video in enumerate(decode(latents).numpy()):
            for suffix in dict.fromkeys([args.out.suffix, *formats]):
                written += write_clip(stems[i + j].with_suffix(suffix), video, fps=v.fps)
    for path in written:
        print(path)
    return 0


def read_images(image: list[Path], last_image: list[Path], prompts: list[str], family, folder: Path,
                source: str) -> tuple[list | None, list | None]:
    """The first (and last) frame of each clip as RGB images, checked against what the teacher takes before any
    weights load: an image refused for a text-to-video teacher, required by an image-to-video one, a last image
    refused where the checkpoint takes none, and a missing or unreadable file named."""
    from distill.teachers.base import image_list

    takes = family.image_input(folder)
    what = f"teacher {source!r} ({folder / 'model_index.json'} names {_pipeline_class(folder)!r})"
    if image and takes == "none":
        raise ConfigError(f"--image: {what} is a text-to-video checkpoint; it takes no image")
    if not image and takes == "required":
        raise ConfigError(f"{what} is an image-to-video checkpoint: give the first frame with --image PATH")
    if last_image and not image:
        raise ConfigError("--last-image needs --image (the first frame) as well")
    if last_image and not family.takes_last_image(folder):
        raise ConfigError(f"--last-image: {what} takes a first image only")
    loaded = []
    for flag, paths in (("--image", image), ("--last-image", last_image)):
        if paths and len(paths) not in (1, len(prompts)):
            raise ConfigError(f"{flag} given {len(paths)} times for {len(prompts)} prompts; give it once (every clip) "
                              f"or once per prompt")
        try:
            loaded.append(image_list([str(p) for p in paths] if len(paths) > 1 else str(paths[0]), len(prompts),
                                     flag) if paths else None)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return loaded[0], loaded[1]


def _pipeline_class(folder: Path) -> str | None:
    from distill.teachers.base import pipeline_class

    return pipeline_class(folder)


def _check_compile(device: str) -> None:
    from distill.teachers.base import pick_device
    from distill.teachers.compiling import CompileUnavailable, check_compile

    try:
        check_compile(pick_device(device))
    except CompileUnavailable as err:
        raise ConfigError(f"--compile: {err}; run without --compile") from None


def _check_sequence_split(cfg, family, folder: Path, world: int):
    """Under torchrun: refuse a clip or a DiT that cannot be split over `world` ranks, and put each rank on its own
    GPU."""
    import torch

    v = cfg.video
    try:
        family.check_sequence_split(folder, v.frames, v.height, v.width, world,
                                    f"distill sample on {world} ranks, clip {v.frames}x{v.height}x{v.width}")
    except ValueError as err:
        raise ConfigError(str(err).replace("parallel.sequence", "the rank count")) from None
    if torch.cuda.is_available() and cfg.device in ("auto", "cuda"):
        cfg = cfg.model_copy(update={"device": f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"})
    return cfg


def _join_sequence_group(world: int) -> int:
    """This rank, after joining the job's process group (nothing to join for one process)."""
    if world == 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()
