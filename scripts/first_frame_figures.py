"""What the first-frame and subject-consistency metrics read on synthetic toy clips, scored with the shipped domain
CLIP: the figures behind docs/eval.md's "Image-to-video" section and the bounds of configs/eval/gates/toyworld-i2v.yaml.

    python scripts/first_frame_figures.py      # CPU, seconds

Three toy subjects (a red disc moving right, a yellow plank moving up quickly, a green pillar standing still), each
against its own first frame: kept with a decoder's grain (+-2 levels of Gaussian noise), the same subject started
elsewhere (another render seed), frame 0 showing another subject; and for subject consistency, the clip holding its
subject vs turning into another subject (another shape and colour, the same motion) from the middle frame on.
"""

from __future__ import annotations

import numpy as np
import torch

from distill import toyworld
from distill.eval import first_frame
from distill.eval.clip_score import ClipBackend
from distill.toyworld import Attributes

SUBJECTS = [Attributes("disc", "red", "black", "right", "slowly"),
            Attributes("plank", "yellow", "gray", "up", "quickly"),
            Attributes("pillar", "green", "white", "still", "still")]
OTHERS = [Attributes("plank", "blue", "black", "right", "slowly"),
          Attributes("disc", "green", "gray", "up", "quickly"),
          Attributes("dot", "red", "white", "still", "still")]


def render(subjects, seed: int = 3) -> np.ndarray:
    return np.stack([toyworld.render(a, seed) for a in subjects])


def with_noise(videos: np.ndarray, sd: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sd, videos.shape)
    return np.clip(videos + noise.round(), 0, 255).astype(np.uint8)


def main() -> None:
    clip = ClipBackend.domain()
    clips = render(SUBJECTS)
    images = torch.from_numpy(clips[:, 0].copy())
    kept = with_noise(clips, 2.0, seed=0)
    other_clips = with_noise(render(OTHERS), 2.0, seed=0)
    cases = {"kept (+-2 levels of noise)": kept,
             "started elsewhere (render seed 11)": with_noise(render(SUBJECTS, seed=11), 2.0, seed=0),
             "frame 0 another subject": np.concatenate([other_clips[:, :1], kept[:, 1:]], axis=1)}
    print("first frame vs its image, per subject:", ", ".join(a.caption() for a in SUBJECTS))
    for name, v in cases.items():
        v = torch.from_numpy(v)
        psnr = first_frame.first_frame_psnr(v, images).numpy()
        dist = first_frame.first_frame_feature_distance(v, images, clip.image_features).numpy()
        print(f"  {name:36s} PSNR dB {np.round(psnr, 2)}  feature_dist[{clip.name}] {np.round(dist, 4)}")
    half = toyworld.FRAMES // 2
    turning = np.concatenate([kept[:, :half], other_clips[:, half:]], axis=1)
    print(f"subject_consistency[{clip.name}]:")
    for name, v in (("holds (+-2 levels of noise)", kept), ("holds, clean", clips),
                    (f"another subject from frame {half}", turning)):
        scores = first_frame.subject_consistency(torch.from_numpy(v), clip.image_features).numpy()
        print(f"  {name:36s} {np.round(scores, 4)}")


if __name__ == "__main__":
    main()
