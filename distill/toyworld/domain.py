"""The toy world: a procedural text-to-video domain small enough to train on two CPU cores.

Every clip shows one shape of one colour crossing a plain background in one direction at one speed. A clip is a
pure function of its attributes and a seed (start position and size jitter), so the same (caption, seed) always
renders the same frames. A fixed set of attribute combinations is held out: the teacher and the metric networks
never see them in training, and the held-out prompt suite is made only of them.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
}
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (120, 120, 120)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slowly": 1.0, "quickly": 2.0}

FRAMES, HEIGHT, WIDTH = 17, 64, 64  # 4k+1 frames for the tiny teacher VAE's 4x temporal compression
SUPERSAMPLE = 4  # anti-aliasing: shapes are drawn at 4x and box-filtered down


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    background: str
    direction: str
    speed: str

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction} {self.speed} on a {self.background} background"


def all_attributes() -> list[Attributes]:
    combos = itertools.product(SHAPES, COLOURS, BACKGROUNDS, DIRECTIONS, SPEEDS)
    return [Attributes(*c) for c in combos]


def _is_held_out(a: Attributes) -> bool:
    # A fixed, balanced slice of (shape, colour, direction) triples: every shape, colour and direction still
    # appears in training, only these combinations of them do not.
    s, c, d = SHAPES.index(a.shape), list(COLOURS).index(a.colour), list(DIRECTIONS).index(a.direction)
    return (s + c + d) % 6 == 0


def held_out_attributes() -> list[Attributes]:
    return [a for a in all_attributes() if _is_held_out(a)]


def train_attributes() -> list[Attributes]:
    return [a for a in all_attributes() if not _is_held_out(a)]


def parse_caption(caption: str) -> Attributes:
    """The inverse of `Attributes.caption`; a caption outside the toy grammar is refused by name."""
    words = caption.strip().split()
    try:
        if len(words) != 10 or [words[i] for i in (0, 3, 6, 7, 9)] != ["a", "moving", "on", "a", "background"]:
            raise ValueError
        attrs = Attributes(shape=words[2], colour=words[1], background=words[8], direction=words[4], speed=words[5])
    except ValueError:
        raise ValueError(
            f"caption {caption!r} is not in the toy grammar "
            f"('a <colour> <shape> moving <direction> <speed> on a <background> background')"
        ) from None
    for field, allowed in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS),
                           ("direction", DIRECTIONS), ("speed", SPEEDS)):
        if getattr(attrs, field) not in allowed:
            raise ValueError(f"caption {caption!r}: unknown {field} {getattr(attrs, field)!r}; one of {list(allowed)}")
    return attrs


def vocabulary() -> list[str]:
    """Every word any caption can contain, in a fixed order (the tiny teacher's tokenizer is built from it)."""
    words = ["a", "moving", "on", "background", *SHAPES, *COLOURS, *BACKGROUNDS, *DIRECTIONS, *SPEEDS]
    return list(dict.fromkeys(words))


def _shape_mask(shape: str, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
    if shape == "square":
        return (np.abs(xs - cx) <= r * 0.85) & (np.abs(ys - cy) <= r * 0.85)
    if shape == "triangle":  # apex up, base down
        top, bottom = cy - r, cy + r * 0.8
        half_width = (ys - top) / (bottom - top) * r
        return (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def render(attrs: Attributes, seed: int, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Render one clip as uint8 [T, H, W, 3]. The seed picks the size and the start position only."""
    rng = random.Random(f"{attrs.caption()}|{seed}")
    s = SUPERSAMPLE
    radius = rng.uniform(0.12, 0.16) * min(height, width)
    dx, dy = DIRECTIONS[attrs.direction]
    step = SPEEDS[attrs.speed] * min(height, width) / 64.0
    travel = step * (frames - 1)
    margin = radius + 1
    # Choose the start so that the whole path stays inside the frame.
    def start(extent: float, d: int) -> float:
        lo, hi = margin, extent - margin
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        return rng.uniform(lo, hi) if hi > lo else extent / 2
    x0, y0 = start(width, dx), start(height, dy)

    colour = np.array(COLOURS[attrs.colour], np.float32)
    background = np.array(BACKGROUNDS[attrs.background], np.float32)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        cx, cy = x0 + dx * step * t, y0 + dy * step * t
        mask = _shape_mask(attrs.shape, cx * s, cy * s, radius * s, height * s, width * s)
        coverage = mask.reshape(height, s, width, s).mean(axis=(1, 3))[..., None]
        video[t] = np.round(coverage * colour + (1 - coverage) * background).astype(np.uint8)
    return video


@dataclass(frozen=True)
class PromptSuite:
    name: str
    prompts: list[str]


def prompt_suite(split: str) -> PromptSuite:
    """The toy world's prompt suites: `train` (combinations seen in training) and `held_out` (never seen)."""
    if split == "train":
        attrs = train_attributes()
    elif split == "held_out":
        attrs = held_out_attributes()
    else:
        raise ValueError(f"unknown toy-world split {split!r}; one of ['train', 'held_out']")
    return PromptSuite(name=f"toyworld/{split}", prompts=[a.caption() for a in attrs])


def sample_examples(split: str, n: int, seed: int) -> list[tuple[Attributes, int]]:
    """n (attributes, render seed) pairs drawn from a split, deterministic by seed."""
    attrs = train_attributes() if split == "train" else held_out_attributes()
    rng = random.Random(seed)
    return [(rng.choice(attrs), rng.randrange(2**31)) for _ in range(n)]


def dataset(split: str, n: int, seed: int = 0, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH):
    """The toy world as a `datasets.Dataset`: caption, attribute columns, render seed, and the uint8 video."""
    import datasets

    rows = {"caption": [], "seed": [], "video": [], **{k: [] for k in Attributes.__dataclass_fields__}}
    for attrs, clip_seed in sample_examples(split, n, seed):
        rows["caption"].append(attrs.caption())
        rows["seed"].append(clip_seed)
        rows["video"].append(render(attrs, clip_seed, frames, height, width))
        for k, v in asdict(attrs).items():
            rows[k].append(v)
    features = datasets.Features({
        "caption": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "video": datasets.Array4D(shape=(frames, height, width, 3), dtype="uint8"),
        **{k: datasets.Value("string") for k in Attributes.__dataclass_fields__},
    })
    return datasets.Dataset.from_dict(rows, features=features).with_format("numpy")


# --- reading a clip back -----------------------------------------------------------------------------------------
# A fixed, network-free reader of the toy grammar: it lets anyone check whether a generated clip shows what its
# caption asked for (shape, colour, background, direction, speed) and how clean its pixels are.

def _nearest(rgb: np.ndarray, palette: dict[str, tuple]) -> str:
    names = list(palette)
    d = [np.abs(rgb - np.array(palette[n], np.float32)).sum() for n in names]
    return names[int(np.argmin(d))]


def read_clip(video: np.ndarray) -> dict:
    """Attributes read off a uint8 clip [T, H, W, 3], plus `palette_error`: the mean distance (RGB units, 0-255)
    of each pixel to the nearer of the clip's background and object colours (a clean render scores near 0)."""
    v = video.astype(np.float32)
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    dist = np.abs(v - bg).sum(-1)  # [T, H, W]
    mask = dist > 90
    out: dict = {"background": _nearest(bg, BACKGROUNDS)}
    if mask.sum() < 10:
        out.update(colour=None, shape=None, direction=None, speed=None,
                   palette_error=float(np.abs(v - bg).mean()))
        return out
    obj = np.median(v[mask], axis=0)
    out["colour"] = _nearest(obj, COLOURS)
    err = np.minimum(np.abs(v - bg).mean(-1), np.abs(v - obj).mean(-1))
    out["palette_error"] = float(err.mean())
    # Centroids per frame, then the dominant axis and sign of the travel.
    ys, xs = np.mgrid[0:v.shape[1], 0:v.shape[2]]
    cent = []
    for m in mask:
        if m.sum() >= 3:
            cent.append((xs[m].mean(), ys[m].mean()))
    cent = np.array(cent) if cent else np.zeros((1, 2))
    travel = cent[-1] - cent[0]
    axis = int(np.argmax(np.abs(travel)))
    out["direction"] = (("left", "right"), ("up", "down"))[axis][int(travel[axis] > 0)]
    per_frame = np.abs(travel[axis]) / max(len(cent) - 1, 1) * 64.0 / min(v.shape[1], v.shape[2])
    out["speed"] = "quickly" if per_frame > 1.5 else "slowly"
    # objectness: how far each pixel is from the background towards the object's colour, 0..1
    contrast = max(float(np.abs(obj - bg).sum()), 1.0)
    objectness = np.clip(dist / contrast, 0, 1) * (dist > 30)
    out["shape"] = _read_shape(objectness)
    return out


def _coverage(shape: str, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    """The shape's anti-aliased coverage [h, w] in 0..1, drawn the way `render` draws it."""
    s = SUPERSAMPLE
    return _shape_mask(shape, cx * s, cy * s, r * s, h * s, w * s).reshape(h, s, w, s).mean(axis=(1, 3))


@functools.cache
def _unit_shape(shape: str) -> tuple[float, float, float]:
    """The shape at radius 1: its area and its centroid's offset (y, x) from its centre."""
    ref = _coverage(shape, 40.0, 40.0, 10.0, 80, 80)  # radius 10 at (40, 40), scaled down by 10
    ys, xs = np.mgrid[0:80, 0:80] + 0.5
    return (float(ref.sum()) / 100.0, ((ys * ref).sum() / ref.sum() - 40.0) / 10.0,
            ((xs * ref).sum() / ref.sum() - 40.0) / 10.0)


def _template(shape: str, area: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """The shape's coverage with the given area (in pixels), its centroid at (cx, cy)."""
    unit_area, oy, ox = _unit_shape(shape)
    r = np.sqrt(area / unit_area)
    return _coverage(shape, cx - ox * r, cy - oy * r, r, h, w)


def _read_shape(objectness: np.ndarray) -> str | None:
    """The shape whose template (same area, same centroid) overlaps the clip's objectness best (soft IoU:
    sum of minima over sum of maxima), summed over three frames in the middle of the clip. Overlap survives the
    soft edges of a generated clip, where how much of its bounding box a thresholded mask fills does not (a
    blurred triangle fills its box like a circle)."""
    t = len(objectness)
    frames = [o for o in (objectness[t // 4], objectness[t // 2], objectness[(3 * t) // 4]) if o.sum() >= 6]
    if not frames:
        return None
    score = dict.fromkeys(SHAPES, 0.0)
    ys, xs = np.mgrid[0:objectness.shape[1], 0:objectness.shape[2]] + 0.5
    for o in frames:
        area = o.sum()
        cx, cy = (xs * o).sum() / area, (ys * o).sum() / area
        for shape in SHAPES:
            tpl = _template(shape, float(area), cx, cy, *o.shape)
            score[shape] += np.minimum(o, tpl).sum() / max(np.maximum(o, tpl).sum(), 1e-6)
    return max(score, key=score.get)


def attribute_accuracy(videos, captions) -> dict:
    """Share of clips whose read-off attribute matches the caption, per attribute, and mean palette error."""
    fields = ("shape", "colour", "background", "direction", "speed")
    hits = {f: 0 for f in fields}
    palette = []
    for video, caption in zip(videos, captions):
        want = parse_caption(caption)
        got = read_clip(np.asarray(video))
        palette.append(got["palette_error"])
        for f in fields:
            hits[f] += got[f] == getattr(want, f)
    n = max(len(palette), 1)
    acc = {f: hits[f] / n for f in fields}
    acc["all"] = float(np.mean([acc[f] for f in fields]))
    acc["palette_error"] = float(np.mean(palette)) if palette else float("nan")
    return acc


def render_pool(split: str, seeds_per_combo: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Every attribute combination of a split rendered `seeds_per_combo` times: uint8 [N, T, H, W, 3], captions."""
    attrs = train_attributes() if split == "train" else held_out_attributes()
    rng = random.Random(f"pool|{split}|{seed}")
    clips, captions = [], []
    for a in attrs:
        for _ in range(seeds_per_combo):
            clips.append(render(a, rng.randrange(2**31)))
            captions.append(a.caption())
    return np.stack(clips), captions
