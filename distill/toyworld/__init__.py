"""The toy world: a procedural text-to-video domain (`domain`): its clips, captions, vocabulary and held-out
combinations. The built-in tiny teachers trained on it are made by scripts/train_tiny_teacher.py from the teacher
family's own builder (they are ordinary pipeline folders). Both eval and the engine may import this layer; it
imports only the core."""

from distill.toyworld.domain import (BACKGROUNDS, COLOURS, DIRECTIONS, EXTENTS, FIELDS, FRAMES, HEIGHT, MOTIONS,
                                     SHAPES, SPEEDS, STILL, SUPERSAMPLE, VALUES, WIDTH, Attributes, PromptSuite,
                                     all_attributes, attribute_accuracy, dataset, held_out_attributes, parse_caption,
                                     prompt_suite, read_clip, render, render_pool, sample_examples, subject_track,
                                     train_attributes, vocabulary)

__all__ = ["BACKGROUNDS", "COLOURS", "DIRECTIONS", "EXTENTS", "FIELDS", "FRAMES", "HEIGHT", "MOTIONS", "SHAPES",
           "SPEEDS", "STILL", "SUPERSAMPLE", "VALUES", "WIDTH", "Attributes", "PromptSuite", "all_attributes",
           "attribute_accuracy", "dataset", "held_out_attributes", "parse_caption", "prompt_suite", "read_clip",
           "render", "render_pool", "sample_examples", "subject_track", "train_attributes", "vocabulary"]
