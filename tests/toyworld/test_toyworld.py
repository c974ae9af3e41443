import numpy as np
import pytest

from distill import toyworld
from distill.toyworld import Attributes


def test_render_is_deterministic_by_seed():
    a = Attributes("circle", "red", "black", "left", "slowly")
    assert np.array_equal(toyworld.render(a, 3), toyworld.render(a, 3))
    assert not np.array_equal(toyworld.render(a, 3), toyworld.render(a, 4))
    clip = toyworld.render(a, 3)
    assert clip.shape == (17, 64, 64, 3) and clip.dtype == np.uint8
    assert (clip.shape[0] - 1) % 4 == 0  # the Wan VAE's 4k+1


def test_held_out_is_disjoint_and_every_value_is_still_trained():
    train, held = set(toyworld.train_attributes()), set(toyworld.held_out_attributes())
    assert held and not train & held
    assert len(train) + len(held) == len(toyworld.all_attributes())
    for field in ("shape", "colour", "background", "direction", "speed"):
        assert {getattr(a, field) for a in held} <= {getattr(a, field) for a in train}
    suites = toyworld.prompt_suite("train").prompts, toyworld.prompt_suite("held_out").prompts
    assert not set(suites[0]) & set(suites[1])
    with pytest.raises(ValueError, match="held_out"):
        toyworld.prompt_suite("test")


def test_caption_round_trip_and_bad_caption():
    for a in toyworld.all_attributes()[::17]:
        assert toyworld.parse_caption(a.caption()) == a
    with pytest.raises(ValueError, match="toy grammar"):
        toyworld.parse_caption("a cat")
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        toyworld.parse_caption("a purple circle moving left slowly on a black background")
    assert set(" ".join(toyworld.prompt_suite("train").prompts).split()) <= set(toyworld.vocabulary())


def test_dataset_columns_and_shapes():
    ds = toyworld.dataset("train", 3, seed=1)
    assert len(ds) == 3 and set(ds.column_names) >= {"caption", "video", "shape", "direction"}
    assert ds[0]["video"].shape == (17, 64, 64, 3)
    assert ds[0]["caption"] == Attributes(*(ds[0][k] for k in ("shape", "colour", "background", "direction",
                                                                  "speed"))).caption()
    assert toyworld.dataset("train", 3, seed=1)["caption"] == ds["caption"]


def test_reader_reads_ground_truth_and_notices_reversal():
    examples = toyworld.sample_examples("held_out", 40, seed=5)
    clips = [toyworld.render(a, s) for a, s in examples]
    captions = [a.caption() for a, _ in examples]
    acc = toyworld.attribute_accuracy(clips, captions)
    assert acc["all"] == 1.0 and acc["palette_error"] < 2.0
    reversed_acc = toyworld.attribute_accuracy([c[::-1] for c in clips], captions)
    assert reversed_acc["direction"] == 0.0
    noisy = [np.clip(c + np.random.default_rng(0).normal(0, 40, c.shape), 0, 255).astype(np.uint8) for c in clips]
    assert toyworld.attribute_accuracy(noisy, captions)["palette_error"] > 10 * acc["palette_error"]


def test_reader_reads_shapes_through_blur_and_credits_no_shape_it_does_not_see():
    from scipy.ndimage import gaussian_filter

    examples = toyworld.sample_examples("train", 60, seed=6)
    clips = [toyworld.render(a, s) for a, s in examples]
    captions = [a.caption() for a, _ in examples]
    # soft edges, as a VAE or a few-step sampler leaves them: the shape is still read
    blurred = [gaussian_filter(c.astype(np.float32), sigma=(0, 1.2, 1.2, 0)).round().astype(np.uint8) for c in clips]
    assert toyworld.attribute_accuracy(blurred, captions)["shape"] >= 0.9
    # a model drawing a square for every prompt (same colour and path) is read as drawing squares
    squares = [toyworld.render(toyworld.Attributes("square", *map(a.__getattribute__, ("colour", "background",
                                                                                      "direction", "speed"))), s)
               for a, s in examples]
    assert {toyworld.read_clip(c)["shape"] for c in squares} == {"square"}
    assert toyworld.attribute_accuracy(squares, captions)["shape"] < 0.5
