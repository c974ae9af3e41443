"""What an evaluation runs: the prompt suite (YAML, validated) and the models it scores."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from distill import toyworld
from distill.core.config import CONFIG_DIR, ConfigError, Strict, load
from distill.core.text import read_lines


class ClipSettings(Strict):
    backend: Literal["domain", "open_clip"] = "domain"
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"  # a tag (open_clip cache, or downloaded when online) or a local file
    frames: int = Field(8, ge=1)


class DiversitySettings(Strict):
    prompts: int = Field(4, ge=0)  # 0 turns the diversity measurement off
    seeds: int = Field(4, ge=2)


class SpeedSettings(Strict):
    clips: int = Field(3, ge=1)  # timed one clip at a time; reported as min/median/max, no interval
    warmup: int = Field(1, ge=0)
    # "encode": each timed clip runs the text encoder (a prompt never seen before); "cached": it reads its prompt's
    # embeddings from the conditioning cache (a prompt seen before), so latency is denoising + decode
    text: Literal["encode", "cached"] = "encode"


class StaticFilterSettings(Strict):
    """VBench's static filter for `flicker.vbench` (eval/flicker.py `static_clips`)."""

    # a pair's threshold in px per frame at the clip's resolution (fastest 2% of pixels); None: VBench's, 3 px at a
    # 256-pixel short side, scaled (0.75 px at 64 pixels)
    max_flow_px: float | None = Field(None, gt=0)


class JediSettings(Strict):
    """JEDi (eval/jedi.py): MMD on V-JEPA 2 features, beside the suite's detector; off unless a suite sets it."""

    path: str  # a local V-JEPA 2 folder (config.json + safetensors), e.g. facebook/vjepa2-vitl-fpc64-256 downloaded
    frames: int = Field(16, ge=2)  # the first `frames` consecutive frames of each clip; a multiple of the tubelet (2)
    batch_size: int = Field(4, ge=1)


class SuiteConfig(Strict):
    name: str
    prompts: list[str] = []
    toyworld_split: Literal["train", "held_out"] | None = None  # the toy world's prompt suite
    prompts_file: str | None = None  # one prompt per line, relative to the suite file
    # Prompts of still scenes (no subject or camera motion): the only clips `flicker.vbench` scores (VBench's
    # protocol), after the static filter. Appended to the suite's prompts.
    static_prompts: list[str] = []
    max_prompts: int | None = Field(None, ge=1)
    seeds_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    frames: int = 17
    height: int = 64
    width: int = 64
    fps: int = 8
    real: Literal["toyworld"] | None = None  # where `fvd[...]:vs_real` takes its real clips from
    # An image-to-video suite's first image per prompt, which the first-frame metrics score frame 0 against:
    # "toyworld" (frame 0 of the toy world's render of the prompt at its first clip's seed), or {prompt: image file}
    # for every prompt (PNG/JPEG at the suite's height x width; a relative path is relative to the suite file).
    # None: a text-to-video suite, and no first-frame metric is computed.
    first_images: Literal["toyworld"] | dict[str, str] | None = None
    clip: ClipSettings = ClipSettings()
    detector: Literal["domain-video-net", "i3d"] = "domain-video-net"
    i3d_path: str | None = None
    jedi: JediSettings | None = None  # None: no JEDi (the toy suites); real-teacher suites set `jedi.path=DIR`
    # pinned: the warp error's name carries it, so it never depends on what happens to be cached
    flow: Literal["raft_small", "farneback"] = "farneback"
    static_filter: StaticFilterSettings = StaticFilterSettings()
    diversity: DiversitySettings = DiversitySettings()
    speed: SpeedSettings = SpeedSettings()
    noise_floor: bool = True  # teacher vs teacher on other seeds: the FVD a perfect student would still get
    batch_size: int = Field(8, ge=1)
    compile: bool = False  # every model's DiT (and distilled decoder) under torch.compile (refused where it cannot)

    @model_validator(mode="before")
    @classmethod
    def _toyworld_still_subjects(cls, data):
        # a toy-world suite's still subjects ("... standing still on ...") are its static prompts
        split = data.get("toyworld_split") if isinstance(data, dict) else None
        if split in ("train", "held_out") and not data.get("static_prompts"):
            data = {**data, "static_prompts": [p for p in toyworld.prompt_suite(split).prompts
                                               if toyworld.STILL in p.split()]}
        return data

    @model_validator(mode="after")
    def _first_images_named(self):
        if isinstance(self.first_images, dict) and not self.first_images:
            raise ValueError("first_images: give 'toyworld' or a mapping of prompt -> image file, not an empty one")
        return self

    @model_validator(mode="after")
    def _has_prompts(self):
        if not (self.prompts or self.toyworld_split or self.prompts_file or self.static_prompts):
            raise ValueError("a suite needs prompts: `prompts`, `toyworld_split`, `prompts_file` or "
                             "`static_prompts`")
        return self


class ModelSpec(Strict):
    """A model to score: the teacher at some settings, or another pipeline folder (a student export)."""

    name: str
    source: str = "teacher"  # "teacher", or a pipeline folder / hub id / builtin:NAME
    steps: int = Field(ge=1)
    sampler: Literal["euler", "unipc", "consistency"] | None = None  # None: the folder's own (else euler)
    guidance: float | None = None  # None: the teacher's for "teacher"; a folder's own, else 1 (no CFG)
    shift: float | None = None
    role: Literal["teacher", "baseline", "student"] = "student"
    # a distilled video decoder (a decoder folder, or an export holding one in decoder/) decoding this model's
    # latents instead of its family's VAE; part of the model: scored, cached and timed as a pair with the DiT
    decoder: str | None = None


def parse_model_spec(text: str) -> ModelSpec:
    """`teacher@4`, `teacher@4:unipc`, `NAME=PATH@4`, `NAME=PATH@4:euler,guidance=1,shift=5`,
    `NAME=PATH@4,decoder=DECODER` (decoded by a distilled decoder instead of the VAE)."""
    name, sep, rest = text.partition("=")
    if not sep or "@" in name:
        name, rest = "", text
    head, _, opts = rest.partition(",")
    source, at, steps_part = head.rpartition("@")
    if not at or not source:
        raise ValueError(f"model {text!r}: give the model and step count as SOURCE@STEPS (for example teacher@4 "
                         f"or student=runs/cd/export@4)")
    steps_text, _, sampler = steps_part.partition(":")
    if not steps_text.isdigit():
        raise ValueError(f"model {text!r}: steps {steps_text!r} is not a whole number")
    if int(steps_text) < 1:
        raise ValueError(f"model {text!r}: steps must be at least 1, got {steps_text}")
    fields: dict = {"source": source, "steps": int(steps_text)}
    if sampler:
        fields["sampler"] = sampler
    for opt in filter(None, opts.split(",")):
        key, eq, value = opt.partition("=")
        if key not in ("guidance", "shift", "role", "decoder") or not eq:
            raise ValueError(f"model {text!r}: option {opt!r} is not guidance=, shift=, role= or decoder=")
        fields[key] = value
    if source == "teacher":
        fields.setdefault("role", "baseline")
    fields["name"] = name or ((f"teacher@{steps_text}" if source == "teacher" else f"{Path(source).name}@{steps_text}")
                              + ("+decoder" if "decoder" in fields else ""))
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as err:  # a bad sampler, guidance or role: one line naming the option, not pydantic's dump
        raise ValueError("; ".join(f"model {text!r}: {e['loc'][0] if e['loc'] else 'spec'} "
                                   f"{e.get('input')!r}: {e['msg']}" for e in err.errors())) from None


# --- resolving a suite: its file, its prompts, its real clips, its first images ------------------------------------
def load_suite(ref: str, overrides: list[str] = ()) -> tuple[SuiteConfig, Path]:
    """A suite by file or by name under configs/eval/suites/; its image files made absolute (relative to the suite
    file), so the harness can read them without knowing where the suite came from."""
    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / "eval" / "suites" / f"{ref}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "eval" / "suites").glob("*.yaml"))
            raise ConfigError(f"no eval suite {ref!r}; give a YAML file or one of {known}")
    suite = load(SuiteConfig, path, overrides)
    if isinstance(suite.first_images, dict):
        files = {p: str(f if Path(f).is_absolute() else (path.parent / f).resolve())
                 for p, f in suite.first_images.items()}
        suite = suite.model_copy(update={"first_images": files})
    return suite, path


def suite_prompts(suite: SuiteConfig, path: Path) -> list[str]:
    prompts = list(suite.prompts)
    if suite.toyworld_split:
        prompts += toyworld.prompt_suite(suite.toyworld_split).prompts
    if suite.prompts_file:
        file = (path.parent / suite.prompts_file) if not Path(suite.prompts_file).is_absolute() else Path(suite.prompts_file)
        if not file.is_file():
            raise ConfigError(f"{path}: key 'prompts_file': {str(file)!r} does not exist")
        prompts += read_lines(file, f"{path}: key 'prompts_file':")
    if suite.max_prompts:
        # an even spread over the list rather than its head, so every attribute stays represented
        step = max(1, len(prompts) // suite.max_prompts)
        prompts = prompts[::step][:suite.max_prompts]
    prompts += [p for p in suite.static_prompts if p not in prompts]  # the static subset is kept whole
    if not prompts:
        raise ConfigError(f"{path}: the suite resolved to no prompts")
    return prompts


def clip_seed(suite: SuiteConfig, prompt_index: int, k: int) -> int:
    """The seed of the k-th clip of the suite's prompt_index-th prompt (every model samples the same ones)."""
    return suite.seed + 1000 * prompt_index + k


def first_images_for(suite: SuiteConfig, prompts: list[str]) -> np.ndarray | None:
    """Each prompt's first image, uint8 [P, H, W, 3] in the order of `prompts`, or None for a text-to-video suite.
    A missing, unreadable or wrongly sized image, or a prompt without one, is refused by name (ConfigError)."""
    if suite.first_images is None:
        return None
    if suite.first_images == "toyworld":
        images = []
        for i, prompt in enumerate(prompts):
            try:
                attrs = toyworld.parse_caption(prompt)
            except ValueError as err:
                raise ConfigError(f"suite {suite.name!r} key 'first_images': toyworld renders toy prompts only: "
                                  f"{err}") from None
            # the whole clip, then its frame 0: the start position depends on the clip's length (the path must fit)
            images.append(toyworld.render(attrs, clip_seed(suite, i, 0), suite.frames, suite.height,
                                          suite.width)[0])
        return np.stack(images)
    missing = [p for p in prompts if p not in suite.first_images]
    if missing:
        raise ConfigError(f"suite {suite.name!r} key 'first_images': no image for {len(missing)} of its "
                          f"{len(prompts)} prompts, the first {missing[0]!r}; give one for every prompt")
    return np.stack([_read_image(suite, prompt, suite.first_images[prompt]) for prompt in prompts])


def _read_image(suite: SuiteConfig, prompt: str, file: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    where = f"suite {suite.name!r} key 'first_images' (prompt {prompt!r}): {file!r}"
    if not Path(file).is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        with Image.open(file) as img:
            image = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise ConfigError(f"{where} is not a readable image ({err})") from None
    # never resized here: the score must read the very pixels the model was given, and a resize rule of our own
    # would differ from the sampler's
    if image.shape[:2] != (suite.height, suite.width):
        raise ConfigError(f"{where} is {image.shape[1]}x{image.shape[0]} (width x height); the suite's clips are "
                          f"{suite.width}x{suite.height}: give the image at the clip size")
    return image


def real_clips_for(suite: SuiteConfig):
    """The suite's real clips as `render(prompt, seed) -> uint8 [T, H, W, 3]`, or None when it has none."""
    if suite.real != "toyworld":
        return None

    def render(prompt: str, seed: int):
        return toyworld.render(toyworld.parse_caption(prompt), seed, suite.frames, suite.height, suite.width)
    return render
