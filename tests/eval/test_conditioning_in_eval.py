"""The eval harness embeds each distinct prompt once for every model and seed that shares a text encoder (its
conditioning cache under the clip cache), with clips bitwise those of uncached sampling; timed clips run the encoder
unless the suite says `speed.text: cached`."""

from __future__ import annotations

import dataclasses

import numpy as np

from distill import toyworld
from distill.eval.harness import Harness
from distill.eval.suite import SuiteConfig, parse_model_spec
from distill.teachers.config import load_teacher_config

PROMPTS = toyworld.prompt_suite("held_out").prompts[:3]


def _suite(**speed) -> SuiteConfig:
    return SuiteConfig(name="cond", prompts=PROMPTS, frames=5, height=32, width=32, batch_size=2,
                       speed={"clips": 1, "warmup": 1, **speed})


def _counted(teacher, monkeypatch) -> dict[str, list]:
    calls = {"embed": [], "encode": []}
    for name in calls:
        real = getattr(teacher, name)

        def wrapper(texts, *args, _real=real, _name=name, **kwargs):
            calls[_name].append(list(texts))
            return _real(texts, *args, **kwargs)
        monkeypatch.setattr(teacher, name, wrapper)
    return calls


def test_every_model_and_seed_shares_one_embedding_per_prompt(untrained_wan, tmp_path, monkeypatch):
    harness = Harness(_suite(), load_teacher_config(str(untrained_wan)), PROMPTS, tmp_path / "out", progress=False)
    four, one = (harness.candidate(parse_model_spec(m)) for m in ("teacher@2", "one=teacher@1:euler"))
    assert four.teacher is one.teacher and four.conditioning is harness.conditioning
    calls = _counted(four.teacher, monkeypatch)
    clips = harness.clips(four, harness.items, "four")
    harness.clips(one, harness.items, "one")
    # batches of 2 clips: the first embeds its 2 prompts and the negative, the second its prompt; the second model
    # nothing
    assert calls == {"embed": [[PROMPTS[0], PROMPTS[1], ""], [PROMPTS[2]]], "encode": []}
    assert len(list((harness.cache_dir / "conditioning").glob("*.safetensors"))) == 4
    uncached = dataclasses.replace(four, conditioning=None)
    for i in range(0, len(harness.items), 2):
        chunk = harness.items[i:i + 2]
        want = uncached.sample([p for p, _ in chunk], [s for _, s in chunk], 5, 32, 32)
        np.testing.assert_array_equal(clips[i:i + 2], want)
    calls["embed"].clear()
    for text in ("encode", "cached"):
        harness.suite = _suite(text=text)
        calls["encode"].clear()
        assert harness.time_model(one)["text_s"] >= 0
        assert calls["embed"] == []  # the suite's prompts are cached by now
        # "encode": the warm-up and the timed clip each run the encoder
        assert calls["encode"] == ([] if text == "cached" else [[PROMPTS[0]], [PROMPTS[1]]])
