"""scripts/check_i2v_teacher.py's per-clip motion scores and their pairing against the teacher: renders that move as
prompted read correctly and track their own truth to 0 px, and a clip frozen on its first frame is worse, paired."""

import numpy as np

from distill import toyworld
from scripts.check_i2v_teacher import paired_vs, per_clip


def test_a_frozen_clip_tracks_worse_than_the_render_it_starts_from():
    prompts = [q for q in toyworld.prompt_suite("held_out").prompts if toyworld.STILL not in q.split()][:4]
    truth = np.stack([toyworld.render(toyworld.parse_caption(q), 7) for q in prompts])
    moving = per_clip(truth, prompts, truth)
    assert np.allclose(moving["track_error_px"], 0) and moving["direction_correct"].all()
    frozen = per_clip(np.repeat(truth[:, :1], truth.shape[1], axis=1), prompts, truth)
    worse = paired_vs(frozen, moving)
    assert worse["track_error_px"]["value"] > 1 and worse["track_error_px"]["n"] == 4
    lo, hi = worse["direction_correct"]["ci95"]
    assert lo <= worse["direction_correct"]["value"] <= hi < 0.5
