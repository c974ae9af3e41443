"""Toy world v2 (distill.toyworld.v2): its attributes survive the DiT's token grid, before any training."""

import numpy as np
import pytest

from distill.toyworld import v2
from scripts.check_toy_world import box_filtered


def test_held_out_suite_is_large_composed_and_holds_still_subjects():
    train, held = set(v2.train_attributes()), set(v2.held_out_attributes())
    assert len(held) >= 84 and not train & held and len(train) + len(held) == len(v2.all_attributes())
    for field in v2.FIELDS:
        assert {getattr(a, field) for a in held} <= {getattr(a, field) for a in train}  # every value trained
    assert len(v2.prompt_suite("still").prompts) >= 9
    assert all("standing still" in p for p in v2.prompt_suite("still").prompts)


def test_captions_round_trip_and_bad_ones_are_named():
    for a in v2.all_attributes()[::7]:
        assert v2.parse_caption(a.caption()) == a
    assert set(" ".join(v2.prompt_suite("train").prompts).split()) <= set(v2.vocabulary())
    with pytest.raises(ValueError, match="unknown shape 'circle'"):
        v2.parse_caption("a red circle moving left slowly on a black background")
    with pytest.raises(ValueError, match="toy grammar"):
        v2.parse_caption("a red dot standing left on a black background")


def test_every_attribute_reads_back_at_one_value_per_token_and_a_reversal_is_noticed():
    examples = v2.sample_examples("held_out", 24, seed=3)
    clips = [v2.render(a, s) for a, s in examples]
    captions = [a.caption() for a, _ in examples]
    assert v2.attribute_accuracy(clips, captions)["all"] == 1.0
    token = v2.attribute_accuracy([box_filtered(c, 8) for c in clips], captions)
    assert min(token[f] for f in v2.FIELDS) >= 0.95, token
    moving = [(c, p) for c, p in zip(clips, captions) if "still" not in p]
    assert v2.attribute_accuracy([c[::-1] for c, _ in moving], [p for _, p in moving])["direction"] == 0.0


def test_a_still_subject_reads_still_and_a_wrong_shape_is_not_credited():
    still = v2.Attributes("pillar", "blue", "white", v2.STILL, v2.STILL)
    got = v2.read_clip(v2.render(still, 0))
    assert (got["shape"], got["direction"], got["speed"]) == ("pillar", "still", "still")
    dot = v2.render(v2.Attributes("dot", "red", "gray", "left", "quickly"), 1)
    assert v2.attribute_accuracy([dot], ["a red disc moving left quickly on a gray background"])["shape"] == 0.0
    blank = np.full((17, 64, 64, 3), 120, np.uint8)
    assert v2.read_clip(blank)["shape"] is None
