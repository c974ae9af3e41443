"""The toy world: a procedural text-to-video domain small enough to train on two CPU cores, whose every attribute
shows at the built-in teacher's token scale.

Every clip shows one subject of one colour on a plain background, crossing it in one direction at one speed or
standing still. A clip is a pure function of its attributes and a seed (start position and size jitter), so the
same (caption, seed) always renders the same frames. A fixed set of attribute combinations is held out: the teacher
and the metric networks never see them in training, and the held-out prompt suite is made only of them.

The teacher's DiT sees a 64×64 clip as tokens of 8×8 pixels, so the attributes differ in extent, not in outline
(docs/toy-world.md has the token-scale check):
- shape: a small `dot` (radius 6 px), a large `disc` (radius 11), a wide `plank` (26×8) and a tall `pillar` (8×26),
  each jittered ±10% in size: area and aspect ratio tell them apart;
- motion: four directions at two speeds (1 and 2 px per frame: half a token and a whole token per latent frame of
  4 frames), or `standing still` (VBench's flicker score needs still subjects);
- colour (four) and background (three); the reader unmixes a colour from its background, so a subject drawn softly
  (or seen one value per token) still reads as its colour.

432 combinations; the held-out rule leaves out a balanced fifth of the (shape, colour, motion) triples over every
background: 87 prompts never trained on (9 of them still), every single value still trained.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np

SHAPES = ("dot", "disc", "plank", "pillar")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
}
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (120, 120, 120)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slowly": 1.0, "quickly": 2.0}  # pixels per frame at 64 px
STILL = "still"  # the direction and the speed of a subject that stays where it is
MOTIONS = (*((d, s) for s in SPEEDS for d in DIRECTIONS), (STILL, STILL))

# every value an attribute takes (a still subject's direction and speed are both `still`)
VALUES = {"shape": list(SHAPES), "colour": list(COLOURS), "background": list(BACKGROUNDS),
          "direction": [*DIRECTIONS, STILL], "speed": [*SPEEDS, STILL]}

FRAMES, HEIGHT, WIDTH = 17, 64, 64
SUPERSAMPLE = 4
# half-extents (x, y) in pixels at 64 px, before the ±10% size jitter
EXTENTS = {"dot": (6.0, 6.0), "disc": (11.0, 11.0), "plank": (13.0, 4.0), "pillar": (4.0, 13.0)}

# the reader's thresholds, in pixels at 64 px, each halfway (geometrically) between the values it separates
STILL_BELOW = 0.5  # px per frame: still below, moving above
QUICK_ABOVE = 1.45  # px per frame: slowly (1) below, quickly (2) above
ASPECT_ABOVE = 1.4  # sqrt(var_x / var_y): a plank above, a pillar below its inverse (discs and dots ~1)
DOT_BELOW = 220.0  # subject area in px: a dot ~113, a disc ~380


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    background: str
    direction: str
    speed: str

    def caption(self) -> str:
        if self.speed == STILL:
            return f"a {self.colour} {self.shape} standing still on a {self.background} background"
        return f"a {self.colour} {self.shape} moving {self.direction} {self.speed} on a {self.background} background"


def all_attributes() -> list[Attributes]:
    return [Attributes(s, c, b, d, v) for s, c, b, (d, v) in itertools.product(SHAPES, COLOURS, BACKGROUNDS, MOTIONS)]


def _is_held_out(a: Attributes) -> bool:
    # A balanced fifth of (shape, colour, motion) triples, over every background: each value is still trained,
    # only these combinations of them are not.
    s, c, m = SHAPES.index(a.shape), list(COLOURS).index(a.colour), MOTIONS.index((a.direction, a.speed))
    return (s + c + m) % 5 == 0


def held_out_attributes() -> list[Attributes]:
    return [a for a in all_attributes() if _is_held_out(a)]


def train_attributes() -> list[Attributes]:
    return [a for a in all_attributes() if not _is_held_out(a)]


def parse_caption(caption: str) -> Attributes:
    """The inverse of `Attributes.caption`; a caption outside the toy grammar is refused by name."""
    w = caption.strip().split()
    grammar = ("'a <colour> <shape> moving <direction> <speed> on a <background> background' or "
               "'a <colour> <shape> standing still on a <background> background'")
    if len(w) == 9 and w[3:5] == ["standing", STILL] and [w[0], w[5], w[6], w[8]] == ["a", "on", "a", "background"]:
        attrs = Attributes(w[2], w[1], w[7], STILL, STILL)
    elif len(w) == 10 and [w[i] for i in (0, 3, 6, 7, 9)] == ["a", "moving", "on", "a", "background"]:
        attrs = Attributes(w[2], w[1], w[8], w[4], w[5])
    else:
        raise ValueError(f"caption {caption!r} is not in the toy grammar ({grammar})")
    for field, allowed in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS)):
        if getattr(attrs, field) not in allowed:
            raise ValueError(f"caption {caption!r}: unknown {field} {getattr(attrs, field)!r}; one of {list(allowed)}")
    if attrs.speed != STILL:
        for field, allowed in (("direction", DIRECTIONS), ("speed", SPEEDS)):
            if getattr(attrs, field) not in allowed:
                raise ValueError(f"caption {caption!r}: unknown {field} {getattr(attrs, field)!r}; "
                                 f"one of {list(allowed)}")
    return attrs


def vocabulary() -> list[str]:
    """Every word any caption can contain, in a fixed order (the tiny teacher's tokenizer is built from it)."""
    words = ["a", "moving", "standing", STILL, "on", "background", *SHAPES, *COLOURS, *BACKGROUNDS, *DIRECTIONS,
             *SPEEDS]
    return list(dict.fromkeys(words))


# --- drawing ----------------------------------------------------------------------------------------------------
def _mask(shape: str, cx: float, cy: float, scale: float, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    ex, ey = (e * scale for e in EXTENTS[shape])
    if shape in ("dot", "disc"):
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= ex**2
    if shape in ("plank", "pillar"):
        return (np.abs(xs - cx) <= ex) & (np.abs(ys - cy) <= ey)
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def render(attrs: Attributes, seed: int, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Render one clip as uint8 [T, H, W, 3]. The seed picks the size jitter and the start position only; the whole
    path stays inside the frame."""
    rng = random.Random(f"{attrs.caption()}|{seed}")
    unit = min(height, width) / 64.0
    scale = rng.uniform(0.9, 1.1) * unit
    dx, dy = DIRECTIONS.get(attrs.direction, (0, 0))
    step = SPEEDS.get(attrs.speed, 0.0) * unit
    travel = step * (frames - 1)

    def start(extent: float, half: float, d: int) -> float:
        lo, hi = half + 1, extent - half - 1
        if d > 0:
            hi -= travel
        elif d < 0:
            lo += travel
        if hi < lo:
            raise AssertionError(f"{attrs.shape} moving {attrs.speed} does not fit a {extent:.0f}-pixel frame")
        return rng.uniform(lo, hi)

    ex, ey = (e * scale for e in EXTENTS[attrs.shape])
    x0, y0 = start(width, ex, dx), start(height, ey, dy)
    colour = np.array(COLOURS[attrs.colour], np.float32)
    background = np.array(BACKGROUNDS[attrs.background], np.float32)
    s = SUPERSAMPLE
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        m = _mask(attrs.shape, (x0 + dx * step * t) * s, (y0 + dy * step * t) * s, scale * s, height * s, width * s)
        coverage = m.reshape(height, s, width, s).mean(axis=(1, 3))[..., None]
        video[t] = np.round(coverage * colour + (1 - coverage) * background).astype(np.uint8)
    return video


@dataclass(frozen=True)
class PromptSuite:
    name: str
    prompts: list[str]


def prompt_suite(split: str) -> PromptSuite:
    """`train` (combinations seen in training), `held_out` (never seen) and `still` (the held-out still subjects)."""
    if split == "train":
        attrs = train_attributes()
    elif split == "held_out":
        attrs = held_out_attributes()
    elif split == "still":
        attrs = [a for a in held_out_attributes() if a.speed == STILL]
    else:
        raise ValueError(f"unknown toy-world split {split!r}; one of ['train', 'held_out', 'still']")
    return PromptSuite(name=f"toyworld/{split}", prompts=[a.caption() for a in attrs])


def sample_examples(split: str, n: int, seed: int) -> list[tuple[Attributes, int]]:
    """n (attributes, render seed) pairs drawn from a split, deterministic by seed."""
    attrs = train_attributes() if split == "train" else held_out_attributes()
    rng = random.Random(seed)
    return [(rng.choice(attrs), rng.randrange(2**31)) for _ in range(n)]


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


def dataset(split: str, n: int, seed: int = 0, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH):
    """The toy world as a `datasets.Dataset`: caption, attribute columns, render seed, and the uint8 video."""
    import datasets

    fields = list(Attributes.__dataclass_fields__)
    rows = {"caption": [], "seed": [], "video": [], **{k: [] for k in fields}}
    for attrs, clip_seed in sample_examples(split, n, seed):
        rows["caption"].append(attrs.caption())
        rows["seed"].append(clip_seed)
        rows["video"].append(render(attrs, clip_seed, frames, height, width))
        for k in fields:
            rows[k].append(getattr(attrs, k))
    features = datasets.Features({
        "caption": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "video": datasets.Array4D(shape=(frames, height, width, 3), dtype="uint8"),
        **{k: datasets.Value("string") for k in fields},
    })
    return datasets.Dataset.from_dict(rows, features=features).with_format("numpy")


# --- reading a clip back -----------------------------------------------------------------------------------------
# A fixed, network-free reader. Every figure it uses is one a token-scale drawing keeps: the subject's colour
# (unmixed from its background), its area and aspect ratio, and the straight-line fit of its centroid over frames.

def _nearest(rgb: np.ndarray, palette: dict[str, tuple]) -> str:
    names = list(palette)
    return names[int(np.argmin([np.abs(rgb - np.array(palette[n], np.float32)).sum() for n in names]))]


def _unmix(obj: np.ndarray, bg: np.ndarray) -> str:
    """The palette colour c that best explains `obj` as a·c + (1−a)·bg with a in [0.25, 1]: a subject drawn softly
    mixes with its background, which moves its colour towards the background's (red on white looks pink)."""
    best, name = np.inf, None
    for n, c in COLOURS.items():
        d = np.array(c, np.float32) - bg
        a = float(np.clip(np.dot(obj - bg, d) / max(float(np.dot(d, d)), 1e-6), 0.25, 1.0))
        residual = float(np.abs(obj - bg - a * d).sum())
        if residual < best:
            best, name = residual, n
    return name


def _read_shape(weight: np.ndarray, unit: float) -> str | None:
    """Area and aspect ratio of the subject (weights: its share of each pixel), averaged over three mid frames."""
    t = len(weight)
    frames = [o for o in (weight[t // 4], weight[t // 2], weight[(3 * t) // 4]) if o.sum() >= 6]
    if not frames:
        return None
    ys, xs = np.mgrid[0:weight.shape[1], 0:weight.shape[2]] + 0.5
    area = var_x = var_y = 0.0
    for o in frames:
        a = o.sum()
        cx, cy = (xs * o).sum() / a, (ys * o).sum() / a
        area += a / len(frames)
        var_x += (o * (xs - cx) ** 2).sum() / a / len(frames)
        var_y += (o * (ys - cy) ** 2).sum() / a / len(frames)
    aspect = np.sqrt(var_x / max(var_y, 1e-6))
    if aspect > ASPECT_ABOVE:
        return "plank"
    if aspect < 1 / ASPECT_ABOVE:
        return "pillar"
    return "dot" if area / unit**2 < DOT_BELOW else "disc"


def _subject(v: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str | None, np.ndarray | None]:
    """(background colour, subject colour, its palette name, its share of each pixel [T, H, W]) of a float clip
    [T, H, W, 3]; the last three None where no subject stands out from the background."""
    border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
    bg = np.median(border, axis=0)
    dist = np.abs(v - bg).sum(-1)  # [T, H, W]
    mask = dist > 90
    if mask.sum() < 10:
        return bg, None, None, None
    strong = dist >= 0.8 * np.quantile(dist[mask], 0.99)  # the subject's purest pixels: its edges mix
    obj = np.median(v[strong], axis=0)
    colour = _unmix(obj, bg)
    contrast = max(float(np.abs(np.array(COLOURS[colour], np.float32) - bg).sum()), 1.0)
    return bg, obj, colour, dist * (dist > 30) / contrast  # not clipped: area survives blur


def _centroids(weight: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The frames where the subject is seen (share >= 3 px) and its centroid (x, y) in each of them."""
    ys, xs = np.mgrid[0:weight.shape[1], 0:weight.shape[2]] + 0.5
    seen = [i for i, o in enumerate(weight) if o.sum() >= 3]
    return seen, np.array([((xs * weight[i]).sum() / weight[i].sum(), (ys * weight[i]).sum() / weight[i].sum())
                           for i in seen]).reshape(len(seen), 2)


def subject_track(video: np.ndarray) -> dict:
    """How far a clip's [T, H, W, 3] subject strays from its mean position (`drift_px`: the largest centroid
    distance over the frames it is seen in) and how much its area breathes (`area_ratio`: largest over smallest),
    with the reader's own subject weights; NaN where no subject is seen in two frames. A still subject that drifts
    or swells moves a flow score without any shimmer of its edges."""
    _, _, _, weight = _subject(video.astype(np.float32))
    seen, centroids = _centroids(weight) if weight is not None else ([], np.zeros((0, 2)))
    if len(seen) < 2:
        return {"drift_px": float("nan"), "area_ratio": float("nan")}
    area = weight[seen].sum(axis=(1, 2))
    return {"drift_px": float(np.linalg.norm(centroids - centroids.mean(0), axis=1).max()),
            "area_ratio": float(area.max() / area.min())}


def read_clip(video: np.ndarray) -> dict:
    """Attributes read off a uint8 clip [T, H, W, 3], plus `palette_error`: the mean distance (RGB units, 0-255)
    of each pixel to the nearer of the clip's background and subject colours (a clean render scores near 0)."""
    v = video.astype(np.float32)
    unit = min(v.shape[1], v.shape[2]) / 64.0
    bg, obj, colour, weight = _subject(v)
    out: dict = {"background": _nearest(bg, BACKGROUNDS)}
    if weight is None:
        out.update(colour=None, shape=None, direction=None, speed=None, palette_error=float(np.abs(v - bg).mean()))
        return out
    out["colour"] = colour
    out["palette_error"] = float(np.minimum(np.abs(v - bg).mean(-1), np.abs(v - obj).mean(-1)).mean())

    seen, centroids = _centroids(weight)
    if len(seen) < 2:
        out.update(direction=None, speed=None, shape=_read_shape(weight, unit))
        return out
    slope = np.polyfit(np.array(seen, float), centroids, 1)[0]  # px per frame, (x, y)
    per_frame = np.abs(slope) / unit
    axis = int(np.argmax(per_frame))
    if per_frame[axis] < STILL_BELOW:
        out["direction"] = out["speed"] = STILL
    else:
        out["direction"] = (("left", "right"), ("up", "down"))[axis][int(slope[axis] > 0)]
        out["speed"] = "quickly" if per_frame[axis] > QUICK_ABOVE else "slowly"
    out["shape"] = _read_shape(weight, unit)
    return out


FIELDS = ("shape", "colour", "background", "direction", "speed")


def attribute_accuracy(videos, captions) -> dict:
    """Share of clips whose read-off attribute matches the caption, per attribute, and mean palette error."""
    hits = dict.fromkeys(FIELDS, 0)
    palette = []
    for video, caption in zip(videos, captions):
        want, got = parse_caption(caption), read_clip(np.asarray(video))
        palette.append(got["palette_error"])
        for f in FIELDS:
            hits[f] += got[f] == getattr(want, f)
    n = max(len(palette), 1)
    acc = {f: hits[f] / n for f in FIELDS}
    acc["all"] = float(np.mean([acc[f] for f in FIELDS]))
    acc["palette_error"] = float(np.mean(palette)) if palette else float("nan")
    return acc
