"""The teacher-family contract: everything the engine, eval, export, planner and recipes may know of a teacher.

A model family (Wan 2.1/2.2 today) is a plug-in, as a recipe is: one package under `teachers/` holding a `Family`
subclass registered with `@register` (teachers/registry.py), or a class another installed package names under the
`distill.teachers` entry-point group. Nothing outside `teachers/` names a family; it asks the registry for the
family of a folder (or of a teacher config's `family:`) and talks to the two objects below.

    Family   stateless: what a checkpoint folder's configs say without loading weights (its checks, the video
             factors, the experts and their boundary, the DiT's shape), and how the family's networks and files
             are made (student backbones, the planner's meta-device DiT, LoRA files in diffusers and native key
             names, the exported stock-pipeline folder)
    Teacher  a loaded checkpoint: conditioning (text, batched and cacheable; and a first / last image for an
             image-to-video checkpoint: `Family.image_input` says which take one), the guided velocity (conditional
             and unconditional halves in one forward; guidance over text, the image in both halves; per-expert
             guidance), sampling, decode/encode, sequence sharding

A family with experts (Wan 2.2 A14B: a high-noise and a low-noise DiT switching at `boundary_ratio`) gives the
engine ONE network, `Teacher.dit`, that routes each sample to its expert by timestep; a student built from it has
the same experts and routes the same way, so training, validation, export and eval switch experts alike.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_list(seed: int | list[int], n: int) -> list[int]:
    """One seed per clip: a list is taken as is; an int s gives s, s+1, ... so clip i is reproducible alone."""
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    if len(seed) != n:
        raise ValueError(f"got {len(seed)} seeds for {n} prompts; give one seed per prompt, or a single int")
    return list(seed)



def prompt_list(prompts: str | list[str]) -> list[str]:
    """The prompts as a list, refused when there are none or one is empty (every family's `encode` takes this)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("empty prompt list: give at least one prompt")
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty:
        raise ValueError(f"prompts at positions {empty} are empty; every prompt needs text")
    return prompts

def refuse_images(what: str, *images) -> None:
    """A text-to-video teacher's answer to image conditioning: ValueError naming it (`what`), when any is given."""
    if any(i is not None for i in images):
        raise ValueError(f"{what} is a text-to-video checkpoint; it takes no image")


# --- what a folder's configs say -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoFactors:
    """How a family's VAE and DiT cut a clip: VAE compression in time and space, and the DiT's patch (t, h, w)."""

    temporal: int
    spatial: int
    patch: tuple[int, int, int]

    def latent_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return ((frames - 1) // self.temporal + 1, height // self.spatial, width // self.spatial)

    def tokens(self, frames: int, height: int, width: int) -> int:
        f, h, w = self.latent_grid(frames, height, width)
        pt, ph, pw = self.patch
        return (f // pt) * (h // ph) * (w // pw)


@dataclass
class Cond:
    """The conditioning of a batch: per-prompt text embeddings, those of the negative prompt (for CFG), and, for an
    image-to-video teacher, what its images give (None for text-only conditioning):

        image_latents  [B, C, F, h, w] the latents the DiT reads beside the noisy ones: for Wan 2.1 / 2.2 A14B I2V
                       the frame mask and the encoded first (and last) frame, concatenated on channels; for Wan 2.2
                       TI2V the clean first-frame latent [B, z, 1, h, w] that replaces frame 0
        image_embeds   [B, N, D] the image encoder's tokens for the DiT's image cross-attention (Wan 2.1 I2V)

    Guidance is over text only: the unconditional half keeps the image, as the stock I2V pipelines do."""

    prompt_embeds: torch.Tensor  # [B, L, D]
    negative_embeds: torch.Tensor | None  # [B, L, D]
    image_latents: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None

    @property
    def has_image(self) -> bool:
        return self.image_latents is not None

    def with_image(self, image_latents: torch.Tensor, image_embeds: torch.Tensor | None) -> "Cond":
        """This text conditioning with an image's: the batch sizes must agree."""
        n = self.prompt_embeds.shape[0]
        for what, value in (("image_latents", image_latents), ("image_embeds", image_embeds)):
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{what} holds {value.shape[0]} images for {n} prompts; give one per prompt")
        return Cond(self.prompt_embeds, self.negative_embeds, image_latents, image_embeds)

    def to(self, device) -> "Cond":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Cond(self.prompt_embeds.to(device), move(self.negative_embeds), move(self.image_latents),
                    move(self.image_embeds))

    def __getitem__(self, index) -> "Cond":
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return Cond(self.prompt_embeds[index], pick(self.negative_embeds), pick(self.image_latents),
                    pick(self.image_embeds))


ImageLike = Any  # a path (str or Path) to an image file, or a PIL image


def load_image(image: ImageLike, what: str = "image"):
    """An RGB PIL image from a path or a PIL image; ValueError naming the file when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, Path)):
        raise ValueError(f"{what}: expected an image file path or a PIL image, got {type(image).__name__}")
    path = Path(image).expanduser()
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist" if not path.exists()
                         else f"{what} {str(path)!r} is not a file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{what} {str(path)!r} is not a readable image ({type(err).__name__}: {err})") from None


def image_list(images: ImageLike | list | None, n: int, what: str = "image") -> list | None:
    """One RGB PIL image per prompt: a single image (or path) is used for all `n` prompts, a list must hold `n`.
    None stays None."""
    if images is None:
        return None
    images = list(images) if isinstance(images, (list, tuple)) else [images] * n
    if len(images) != n:
        raise ValueError(f"got {len(images)} {what}s for {n} prompts; give one, or one per prompt")
    loaded: dict[int, Any] = {}  # the same object given for several prompts is read once
    for img in images:
        if id(img) not in loaded:
            loaded[id(img)] = load_image(img, what)
    return [loaded[id(img)] for img in images]


class FamilyError(ValueError):
    """A folder, expert layout or file a family cannot serve (raised before any weights load)."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise FamilyError(f"{str(path)!r} is not valid JSON ({err})") from None


_JSON_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (list,), list: (list,)}


def check_config_types(config: Path, class_name: str, name: str) -> None:
    """Each key of a diffusers component's config.json has the JSON type of its class's default (a number where a
    number is expected, a list where a tuple is); null is always allowed. A wrong type otherwise surfaces as an
    unrelated TypeError deep inside diffusers (`not all arguments converted during string formatting`)."""
    import inspect

    import diffusers

    if not config.is_file():
        return
    cls = getattr(diffusers, class_name, None)
    if cls is None or not isinstance(cls, type):
        return  # a class this diffusers does not have is diffusers' own message to give
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    data = read_json(config)
    for key, value in data.items():
        param = params.get(key)
        if key.startswith("_") or value is None or param is None or param.default in (None, inspect.Parameter.empty):
            continue
        want = next((t for t in (bool, int, float, str, tuple, list) if isinstance(param.default, t)), None)
        bool_for_number = want is not bool and isinstance(value, bool)
        if want is None or (isinstance(value, _JSON_TYPES[want]) and not bool_for_number):
            continue
        article = "an" if want.__name__[0] in "aeiou" else "a"
        raise FamilyError(f"teacher {name!r}: {str(config)!r} key {key!r} is {json.dumps(value)} "
                          f"({type(value).__name__}); {class_name} takes {article} {want.__name__} there "
                          f"(default {json.dumps(param.default)})")


def pipeline_class(folder: Path) -> str | None:
    """The `_class_name` of a diffusers pipeline folder's model_index.json (None without one)."""
    index = Path(folder) / "model_index.json"
    return read_json(index).get("_class_name") if index.is_file() else None


def meta_from_config(dit_cls, config: dict, layers: int | None = None, dtype: torch.dtype = torch.float32):
    """A diffusers DiT class built from a config.json on the meta device (no memory), `layers` deep if given."""
    from distill.core.logs import quiet_diffusers

    keys = {k: v for k, v in config.items() if not k.startswith("_")}
    if layers is not None:
        keys["num_layers"] = layers
    with torch.device("meta"), quiet_diffusers():
        return dit_cls.from_config(keys).to(dtype)


def dit_folder(path: str | Path) -> Path | None:
    """The DiT's folder inside a pipeline folder (`transformer/`), or `path` itself when it is a transformer
    folder; None when it is neither (no config.json there)."""
    path = Path(path)
    for candidate in (path / "transformer", path):
        if (candidate / "config.json").is_file():
            return candidate
    return None


# --- a loaded teacher ------------------------------------------------------------------------------------------------
class Teacher(Protocol):
    """A loaded checkpoint, as the engine, eval and commands use it. `model` arguments are `dit` or any network of
    its shape (a student, its EMA, a DeepSpeed engine around one); t is the noise level in [0, 1] ([B], float64)."""

    family: "Family"
    folder: Path
    device: torch.device
    dtype: torch.dtype  # the DiT's compute dtype
    max_sequence_length: int
    dit: nn.Module | None  # the velocity network (the experts behind one router where there are experts)
    guidance_2: float | None  # the low-noise expert's own guidance (None: the same as the high-noise one)

    # What a teacher takes besides text: "none" (text-to-video), "optional" (a text-and-image-to-video checkpoint
    # such as Wan 2.2 TI2V-5B) or "required" (an image-to-video checkpoint); `takes_last_image`: a last frame too.
    image_input: str
    takes_last_image: bool

    def encode(self, prompts: list[str], negative: str | list[str] | None = "", images=None, last_images=None,
               size: tuple[int, int, int] | None = None) -> Cond: ...
    # `images` (and `last_images`): one image per prompt, or one for all (paths or PIL images, `image_list`); the
    # image conditioning depends on the clip's (frames, height, width) `size`, which it then needs. Without images
    # the Cond is text-only (what `encode_images` adds is None).
    def encode_images(self, images, size: tuple[int, int, int], last_images=None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]: ...  # (image_latents, image_embeds) of Cond
    def embed(self, texts: list[str]) -> torch.Tensor: ...  # [B, L, D]; padding rows exactly zero (a
    # cache trims and re-pads them; a family whose DiT takes a text mask rebuilds it from them)
    # `image`: a Cond whose image fields the forward reads (None or a text-only Cond: text-to-video)
    def forward(self, model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, image: Cond | None = None
                ) -> torch.Tensor: ...
    def forward_all(self, model, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, image: Cond | None = None,
                    **kwargs) -> tuple: ...
    def guided(self, model, x, t, cond: Cond, guidance: float, guidance_2: float | None = None) -> torch.Tensor: ...
    def velocity(self, x_t, t, cond: Cond, guidance: float = 1.0, guidance_2: float | None = None
                 ) -> torch.Tensor: ...
    def noise(self, n: int, frames: int, height: int, width: int, seed: int | list[int]) -> torch.Tensor: ...
    def sample(self, prompts: list[str], steps: int = 50, guidance: float = 5.0, shift: float = 3.0,
               seed: int | list[int] = 0, sampler: str = "unipc", negative: str = "", frames: int = 81,
               height: int = 480, width: int = 832, progress: bool = False, cond: Cond | None = None,
               guidance_2: float | None = None, grid=None, images=None, last_images=None) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...  # -> uint8 [B, T, H, W, 3]
    def encode_video(self, video: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor: ...
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]: ...
    def check_video_size(self, frames: int, height: int, width: int) -> None: ...
    def shard_sequence(self, group) -> "Teacher": ...
    def unshard_sequence(self) -> "Teacher": ...
    def drop_text_encoder(self) -> None: ...  # every prompt is embedded: free the encoder
    def drop_dit(self) -> None: ...  # a recipe that never runs the teacher's DiT: free it (the VAE stays)
    # The latent frames an image conditioning gives clean (Wan 2.2 TI2V: the first, which the DiT reads at noise level
    # 0 and which replaces the sampled frame): a bool [F] over x's latent frames, or None when every frame is
    # generated (text-to-video, or an image read beside the latents). A distillation loss scores only the others.
    def image_frames(self, x: torch.Tensor, image: Cond | None) -> torch.Tensor | None: ...
    def keep_image_frames(self, x: torch.Tensor, image: Cond | None) -> torch.Tensor: ...  # x with those frames
    # set to the image's latents (x itself when there are none), as the family's sampler ends a clip


# --- the family ---------------------------------------------------------------------------------------------------
class Family(ABC):
    """A model family as a plug-in. Subclasses set the class attributes and implement the abstract methods; the
    others have defaults that fit a diffusers pipeline with one `transformer/`."""

    name: ClassVar[str]  # what a teacher config's `family:` says
    description: ClassVar[str] = ""
    pipeline_classes: ClassVar[tuple[str, ...]]  # model_index.json `_class_name`s it serves
    components: ClassVar[tuple[str, ...]] = ("transformer", "vae", "scheduler")  # folders a checkpoint must have
    dit_classes: ClassVar[tuple[str, ...]]  # class names of its DiTs (and of its expert router)
    shape_keys: ClassVar[tuple[str, ...]] = ()  # DiT config keys a student init must share with the teacher
    lora_targets: ClassVar[tuple[str, ...]]  # LoRA's default target modules on its DiT
    native_lora_file: ClassVar[str | None] = None  # the adapter in the family's native key names, when it has one
    # The classes model_index.json may name for each component (others: not checked); diffusers' own message for a
    # wrong one is a shape mismatch deep in its loader that names neither the file nor the class.
    component_classes: ClassVar[dict[str, tuple[str, ...]]] = {}
    # The components that turn text into embeddings: what a conditioning cache keys on (teachers/conditioning.py),
    # so a student export that kept its teacher's encoder shares the teacher's cached embeddings.
    text_components: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")
    # The components that turn an image into its conditioning (`Teacher.encode_images`): what a cache of encoded
    # images keys on, so that a changed VAE or image encoder never reuses a stale entry.
    image_components: ClassVar[tuple[str, ...]] = ("vae", "image_encoder", "image_processor")

    # --- a folder's configs, no weights ---------------------------------------------------------------------------
    def check_folder(self, folder: Path, name: str) -> None:
        """Refuse a folder this family cannot load (FamilyError naming the file or component)."""
        cls = pipeline_class(folder)
        if cls not in self.pipeline_classes:
            raise FamilyError(f"teacher {name!r}: {folder / 'model_index.json'} names pipeline class {cls!r}; "
                              f"family {self.name!r} serves {list(self.pipeline_classes)}")
        missing = [c for c in (*self.components, *self.experts(folder)) if not (folder / c).is_dir()]
        if missing:
            raise FamilyError(f"teacher {name!r}: {str(folder)!r} lacks the component folders {missing}")
        index = read_json(folder / "model_index.json")
        for component in (*self.components, *self.experts(folder)):
            entry = index.get(component)
            allowed = self.component_classes.get(component)
            if allowed and not (isinstance(entry, list) and len(entry) == 2 and entry[1] in allowed):
                raise FamilyError(f"teacher {name!r}: {folder / 'model_index.json'} names {entry!r} for {component!r}; "
                                  f"family {self.name!r} loads {' or '.join(allowed)} there")
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers":
                check_config_types(folder / component / "config.json", entry[1], name)

    def encoder_hash(self, folder: Path) -> str:
        """The identity of a folder's text encoder (`text_components`, configs and weights as `checkpoint_hash`
        reads them): equal for two folders whose embeddings are the same, whatever their DiTs."""
        return self._components_hash(folder, self.text_components)

    def image_encoder_hash(self, folder: Path) -> str:
        """The identity of what encodes a folder's conditioning images (`image_components`, as `encoder_hash`)."""
        return self._components_hash(folder, self.image_components)

    def _components_hash(self, folder: Path, components: tuple[str, ...]) -> str:
        import hashlib

        from distill.core.hashing import checkpoint_hash

        h = hashlib.sha256(self.name.encode())
        for component in components:
            sub = Path(folder) / component
            h.update(f"|{component}:{checkpoint_hash(sub) if sub.is_dir() else 'absent'}".encode())
        return h.hexdigest()[:16]

    def image_input(self, folder: Path) -> str:
        """What a folder's checkpoint does with a conditioning image: "none" (text-to-video), "optional" (text- or
        image-to-video) or "required" (image-to-video)."""
        return "none"

    def takes_last_image(self, folder: Path) -> bool:
        """Whether the checkpoint also takes a last frame (first-and-last-frame-to-video)."""
        return False

    def experts(self, folder: Path) -> tuple[str, ...]:
        """The DiT components, highest noise first: ("transformer",), or two for a two-expert checkpoint."""
        return ("transformer",)

    def boundary(self, folder: Path) -> float | None:
        """Where a two-expert checkpoint switches from its first expert to its second, as a fraction of the
        training timesteps (t ≥ boundary: the first); None with one expert."""
        return None

    def dit_config(self, folder: Path) -> dict:
        return read_json(Path(folder) / self.experts(folder)[0] / "config.json")

    @abstractmethod
    def video_factors(self, folder: Path) -> VideoFactors: ...

    @abstractmethod
    def check_video_size(self, frames: int, height: int, width: int, factors: VideoFactors) -> None:
        """Refuse (ValueError naming the value and what would be accepted) a clip size the family cannot take."""

    def attention_heads(self, dit_config: dict) -> int:
        return int(dit_config["num_attention_heads"])

    def width(self, dit_config: dict) -> int:
        """The DiT's token width."""
        return self.attention_heads(dit_config) * int(dit_config["attention_head_dim"])

    def depth(self, dit_config: dict) -> int:
        return int(dit_config.get("num_layers", 1))

    def latent_channels(self, dit_config: dict) -> int:
        return int(dit_config["in_channels"])

    def patch(self, dit_config: dict) -> tuple[int, int, int]:
        """The DiT's (t, h, w) patch over the latent grid."""
        return tuple(dit_config.get("patch_size", (1, 1, 1)))

    def check_init(self, init: str, folder: Path, key: str, teacher: str) -> None:
        """Refuse a student (or other network) init folder that cannot be trained against this teacher: not a
        folder of this family's DiT(s), another expert layout, or another shape (FamilyError naming `key`)."""
        path = Path(init)
        if not path.exists():
            raise FamilyError(f"{key}: {init!r} does not exist (give 'teacher', a diffusers transformer folder or a "
                              f"pipeline folder such as a `distill export`)")
        dit = dit_folder(path)
        if dit is None:
            raise FamilyError(f"{key}: {init!r} is neither a diffusers transformer folder nor a pipeline folder "
                              f"(no config.json or transformer/config.json)")
        ours, theirs = self.dit_config(folder), read_json(dit / "config.json")
        diff = {k: (theirs.get(k), ours.get(k)) for k in self.shape_keys if theirs.get(k) != ours.get(k)}
        if diff:
            raise FamilyError(f"{key}: {init!r} cannot be trained against teacher {teacher!r}: "
                              + ", ".join(f"{k} is {a!r}, the teacher's is {b!r}" for k, (a, b) in diff.items()))

    def check_sequence_split(self, folder: Path, frames: int, height: int, width: int, n: int,
                             where: str = "", inits: list[tuple[str, str]] = ()) -> None:
        """Refuse (ValueError) a sequence-parallel degree the DiT's heads (and those of the student inits) or this
        clip's tokens do not divide."""
        from distill.teachers.parallel import check_sequence_split

        tokens = self.video_factors(folder).tokens(frames, height, width)
        dits = {"teacher": self.dit_config(folder)}
        for key, init in inits:
            if init != "teacher":
                dits[f"{key} {init!r}"] = read_json(dit_folder(init) / "config.json")
        for name, config in dits.items():
            check_sequence_split(self.attention_heads(config), tokens, n,
                                 f"{name}, {where}" if inits and where else where or name)

    # --- loading ------------------------------------------------------------------------------------------------
    @abstractmethod
    def load(self, folder: Path, dtype: torch.dtype, device: torch.device, max_sequence_length: int,
             guidance_2: float | None = None) -> Teacher: ...

    # --- networks -----------------------------------------------------------------------------------------------
    @abstractmethod
    def dit_from_pretrained(self, folder: Path) -> nn.Module:
        """The family's velocity network from a folder (a pipeline folder or a transformer folder), in fp32:
        one DiT, or the experts behind their router."""

    def student_dit(self, teacher: Teacher, init: str) -> nn.Module:
        """A copy of the teacher's velocity network (init "teacher"), or the network of another folder."""
        return copy.deepcopy(teacher.dit) if init == "teacher" else self.dit_from_pretrained(Path(init))

    @abstractmethod
    def meta_dit(self, config: dict, layers: int | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
        """One expert's DiT on the meta device (no memory), `layers` blocks deep if given: the planner counts it."""

    @abstractmethod
    def dit_inputs(self, dit_config: dict, x: torch.Tensor, text_tokens: int) -> dict[str, torch.Tensor]:
        """The keyword inputs of one DiT forward on latents `x` [B, C, F, H, W] with `text_tokens` of text, on
        x's device and dtype (the planner traces a meta-device forward with them)."""

    @abstractmethod
    def dit_blocks(self, dit: nn.Module) -> nn.ModuleList:
        """The transformer blocks of one DiT (features at named blocks, discriminator heads)."""

    @abstractmethod
    def dit_output(self, dit: nn.Module) -> list[nn.Module | nn.Parameter]:
        """What of a DiT only its velocity output reads (final norm and projection, modulation table): frozen and
        unused in a network that keeps only its features."""

    def experts_of(self, dit: nn.Module) -> list[tuple[str, nn.Module]]:
        """(component, DiT) of a velocity network: [("transformer", dit)], or one per expert."""
        return [("transformer", dit)]

    def add_lora(self, dit: nn.Module, config) -> None:
        """Add a peft LoRA adapter (a `peft.LoraConfig`) to every DiT of a velocity network."""
        for _, expert in self.experts_of(dit):
            expert.add_adapter(config)

    def enable_gradient_checkpointing(self, dit: nn.Module) -> None:
        for _, expert in self.experts_of(dit):
            expert.enable_gradient_checkpointing()

    def split_experts(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """A velocity network's state dict, per component ({"transformer": state} with one expert)."""
        return {"transformer": state}

    def dit_folders(self, folder: Path, experts: tuple[str, ...]) -> dict[str, Path]:
        """Where `save_dit` writes each expert's DiT under `folder`: `folder` itself for one, a subfolder each for
        several."""
        return {experts[0]: Path(folder)} if len(experts) == 1 else {e: Path(folder) / e for e in experts}

    def join_experts(self, parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The inverse of `split_experts`."""
        return parts["transformer"]

    def read_dit_state(self, folder: Path) -> dict[str, torch.Tensor]:
        """Weights written by `save_dit`, as the velocity network's state dict."""
        from safetensors.torch import load_file

        folder = Path(folder)
        name = "diffusion_pytorch_model.safetensors"
        subs = sorted(p.parent.name for p in folder.glob(f"*/{name}"))
        parts = {c: load_file(folder / c / name) for c in subs} if subs else {"transformer": load_file(folder / name)}
        return self.join_experts(parts)

    def save_dit(self, dit: nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
        """Write whole weights (`state`, gathered from a possibly partitioned `dit`) as diffusers folder(s): one
        DiT's config.json and safetensors in `folder`, or one subfolder per expert component."""
        from safetensors.torch import save_file

        experts = dict(self.experts_of(dit))
        parts = self.split_experts(state)
        where = self.dit_folders(folder, tuple(parts))
        for component, weights in parts.items():
            sub = where[component]
            sub.mkdir(parents=True, exist_ok=True)
            experts[component].save_config(sub)
            save_file(weights, sub / "diffusion_pytorch_model.safetensors")

    # --- LoRA files ---------------------------------------------------------------------------------------------
    @abstractmethod
    def save_lora(self, folder: Path, weights: dict[str, torch.Tensor], lora: dict) -> list[Path]:
        """Adapter weights (peft names on the velocity network) as the family pipeline's LoRA file(s), one per
        expert; `lora`: rank, alpha, dropout, target_modules. Returns the files written."""

    @abstractmethod
    def fuse_lora(self, base: Path, lora_file: Path, dest: Path, component: str = "transformer") -> int:
        """Save the DiT of `base` with the adapter `lora_file` fused in to `dest`, checked numerically; returns
        the number of fused layers."""

    def write_native_lora(self, lora_file: Path, dest: Path) -> int:
        """The adapter in the family's native key names (ComfyUI and the family's own code); layers written."""
        raise NotImplementedError(f"family {self.name!r} has no native LoRA format")

    def lora_files(self, folder: Path, experts: tuple[str, ...]) -> dict[str, Path]:
        """Where `save_lora` wrote each expert's adapter inside `folder`."""
        return {c: folder / ("" if i == 0 else c) / "pytorch_lora_weights.safetensors" for i, c in enumerate(experts)}

    # --- export -------------------------------------------------------------------------------------------------
    def few_step_scheduler(self, shift: float, teacher_folder: Path, steps: int | None = None, grid=None):
        """The diffusers scheduler with which the family's stock pipeline samples a `steps`-step student exactly as
        the project's consistency sampler does on its grid (samplers.student_levels): per step, jump to the clean
        estimate and re-noise to the next level. The legacy "euler" grid (`grid` None) is the plain shifted
        scheduler, right for any step count; any other grid is a static shift and `shift_terminal` found for
        `steps` steps (schedule.few_step_scheduler), exact for that count only."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from distill.teachers.samplers import LEGACY_GRID, student_levels
        from distill.teachers.schedule import few_step_scheduler

        if grid is None or grid == LEGACY_GRID:
            return FlowMatchEulerDiscreteScheduler(shift=shift, stochastic_sampling=True)
        if steps is None:
            raise FamilyError(f"family {self.name!r}: the scheduler of grid {grid!r} depends on the step count; "
                              f"pass steps")
        try:
            return few_step_scheduler(student_levels(steps, shift, grid))
        except ValueError as err:
            raise FamilyError(f"family {self.name!r}: {err}") from None

    def pipeline_config(self, teacher_folder: Path) -> dict[str, Any]:
        """model_index.json entries beside the components that an export keeps (a boundary, ...)."""
        return {}

    def readme(self, out_name: str, sampler: dict, video, max_sequence_length: int, lora: bool,
               experts: tuple[str, ...]) -> str:
        """The family's part of an export's README.md: how to sample it with the stock pipeline (and, for a LoRA
        student, how to load the adapter files on the teacher)."""
        return ""
