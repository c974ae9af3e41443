"""The toy world (distill.toyworld): deterministic renders, a composed held-out split with still subjects, and a
reader that reads every attribute back, also at one value per DiT token."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from distill import toyworld
from distill.toyworld import STILL, Attributes
from scripts.check_toy_world import box_filtered


def test_render_is_deterministic_by_seed():
    a = Attributes("disc", "red", "black", "left", "slowly")
    assert np.array_equal(toyworld.render(a, 3), toyworld.render(a, 3))
    assert not np.array_equal(toyworld.render(a, 3), toyworld.render(a, 4))
    clip = toyworld.render(a, 3)
    assert clip.shape == (17, 64, 64, 3) and clip.dtype == np.uint8
    assert (clip.shape[0] - 1) % 4 == 0  # the Wan VAE's 4k+1
    still = toyworld.render(Attributes("plank", "green", "gray", STILL, STILL), 3)
    assert np.array_equal(still[0], still[-1])


def test_held_out_is_large_disjoint_composed_and_holds_still_subjects():
    train, held = set(toyworld.train_attributes()), set(toyworld.held_out_attributes())
    assert len(held) >= 84 and not train & held
    assert len(train) + len(held) == len(toyworld.all_attributes())
    for field in toyworld.FIELDS:
        assert {getattr(a, field) for a in held} <= {getattr(a, field) for a in train}  # every value trained
    suites = toyworld.prompt_suite("train").prompts, toyworld.prompt_suite("held_out").prompts
    assert not set(suites[0]) & set(suites[1])
    still = toyworld.prompt_suite("still").prompts
    assert len(still) >= 9 and set(still) <= set(suites[1]) and all("standing still" in p for p in still)
    with pytest.raises(ValueError, match="held_out"):
        toyworld.prompt_suite("test")


def test_caption_round_trip_and_bad_caption():
    for a in toyworld.all_attributes()[::7]:
        assert toyworld.parse_caption(a.caption()) == a
    with pytest.raises(ValueError, match="toy grammar"):
        toyworld.parse_caption("a cat")
    with pytest.raises(ValueError, match="toy grammar"):
        toyworld.parse_caption("a red dot standing left on a black background")
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        toyworld.parse_caption("a purple disc moving left slowly on a black background")
    with pytest.raises(ValueError, match="unknown shape 'circle'"):
        toyworld.parse_caption("a red circle moving left slowly on a black background")
    assert set(" ".join(toyworld.prompt_suite("train").prompts).split()) <= set(toyworld.vocabulary())


def test_dataset_columns_and_shapes():
    ds = toyworld.dataset("train", 3, seed=1)
    assert len(ds) == 3 and set(ds.column_names) >= {"caption", "video", "shape", "direction"}
    assert ds[0]["video"].shape == (17, 64, 64, 3)
    assert ds[0]["caption"] == Attributes(*(ds[0][k] for k in toyworld.FIELDS)).caption()
    assert toyworld.dataset("train", 3, seed=1)["caption"] == ds["caption"]


def test_reader_reads_every_attribute_at_one_value_per_token_and_notices_reversal():
    examples = toyworld.sample_examples("held_out", 24, seed=3)
    clips = [toyworld.render(a, s) for a, s in examples]
    captions = [a.caption() for a, _ in examples]
    acc = toyworld.attribute_accuracy(clips, captions)
    assert acc["all"] == 1.0 and acc["palette_error"] < 2.0
    token = toyworld.attribute_accuracy([box_filtered(c, 8) for c in clips], captions)
    assert min(token[f] for f in toyworld.FIELDS) >= 0.95, token
    moving = [(c, p) for c, p in zip(clips, captions) if STILL not in p]
    assert toyworld.attribute_accuracy([c[::-1] for c, _ in moving], [p for _, p in moving])["direction"] == 0.0
    noisy = [np.clip(c + np.random.default_rng(0).normal(0, 40, c.shape), 0, 255).astype(np.uint8) for c in clips]
    assert toyworld.attribute_accuracy(noisy, captions)["palette_error"] > 10 * acc["palette_error"]


def test_reader_credits_no_shape_or_motion_it_does_not_see():
    examples = toyworld.sample_examples("train", 24, seed=6)
    clips = [toyworld.render(a, s) for a, s in examples]
    captions = [a.caption() for a, _ in examples]
    blurred = [gaussian_filter(c.astype(np.float32), sigma=(0, 1.2, 1.2, 0)).round().astype(np.uint8) for c in clips]
    assert toyworld.attribute_accuracy(blurred, captions)["all"] == 1.0  # soft edges, as a VAE leaves them
    # a model drawing a disc for every prompt (same colour and path) is read as drawing discs
    discs = [toyworld.render(Attributes("disc", a.colour, a.background, a.direction, a.speed), s) for a, s in examples]
    assert {toyworld.read_clip(c)["shape"] for c in discs} == {"disc"}
    assert toyworld.attribute_accuracy(discs, captions)["shape"] < 0.5
    # a model that never moves its subject is read as still
    frozen = [np.repeat(c[8:9], len(c), axis=0) for c in clips]
    assert {toyworld.read_clip(c)["speed"] for c in frozen} == {STILL}
    assert toyworld.read_clip(np.full((17, 64, 64, 3), 120, np.uint8))["shape"] is None


def test_the_subject_track_sees_a_drift_that_a_still_render_does_not_have():
    still = toyworld.render(toyworld.parse_caption("a green disc standing still on a black background"), 3)
    moving = toyworld.render(toyworld.parse_caption("a green disc moving left quickly on a black background"), 3)
    swollen = still.copy()
    swollen[8:] = np.maximum(swollen[8:], np.roll(swollen[8:], 4, axis=2))  # wider from frame 8 on, and off-centre
    track = [toyworld.subject_track(clip) for clip in (still, moving, swollen)]
    assert track[0]["drift_px"] < 0.05
    assert track[0]["area_ratio"] == pytest.approx(1.0, abs=0.02)
    assert track[1]["drift_px"] > 5  # two px a frame, at least, over 17 frames
    assert 0.6 < track[2]["drift_px"] < 1.5 and track[2]["area_ratio"] > 1.1
