"""Cached conditioning (teachers/conditioning.py): the cached `Cond` and the clips sampled with it are the uncached
ones bit for bit; the encoder runs once per distinct text, within a call (memory) and across calls (disk); another
encoder misses; a damaged entry is named, dropped and embedded again."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill import toyworld
from distill.teachers import registry
from distill.teachers.conditioning import CondCache

PROMPTS = toyworld.prompt_suite("held_out").prompts[:2]
CLIP = dict(frames=5, height=32, width=32)


def _load(folder):
    return registry.family_of(folder).load(folder, torch.float32, torch.device("cpu"), 16)


@pytest.fixture(scope="module")
def teacher(untrained_wan):
    return _load(untrained_wan)


def _count_embeds(teacher, monkeypatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = teacher.embed

    def embed(texts):
        calls.append(list(texts))
        return real(texts)
    monkeypatch.setattr(teacher, "embed", embed)
    return calls


def test_cached_conditioning_and_its_clips_are_bitwise_the_uncached_ones(teacher, tmp_path):
    a, b = PROMPTS
    prompts = [a, b, a]
    plain = teacher.encode(prompts, "")
    for cache in (CondCache(tmp_path), CondCache(tmp_path)):  # the second reads every text back from disk
        cond = cache.encode(teacher, prompts, "")
        assert torch.equal(cond.prompt_embeds, plain.prompt_embeds)
        assert torch.equal(cond.negative_embeds, plain.negative_embeds)
    assert cache.stats == {"embedded": 0, "memory": 0, "disk": 3, "dropped": 0}
    kwargs = dict(steps=2, guidance=5.0, seed=[3, 4, 5], sampler="euler", **CLIP)
    uncached = teacher.sample(prompts, **kwargs)
    cached = teacher.sample(prompts, cond=cache.encode(teacher, prompts, ""), **kwargs)
    assert torch.equal(cached, uncached)
    assert cache.encode(teacher, [b], None).negative_embeds is None  # no CFG: no negative


def test_the_encoder_runs_once_per_distinct_text_within_a_call_and_across_calls(teacher, tmp_path, monkeypatch):
    a, b = PROMPTS
    calls = _count_embeds(teacher, monkeypatch)
    cache = CondCache(tmp_path)
    cache.encode(teacher, [a, a, b], "")
    cache.encode(teacher, [b, a], "")
    cache.encode(teacher, [a], None)
    assert calls == [[a, b, ""]]  # three texts, embedded once, in one batch
    assert cache.stats["embedded"] == 3 and cache.stats["memory"] == 4
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    later = CondCache(tmp_path)  # another call: the disk layer
    later.encode(teacher, [b, a], "")
    assert calls == [[a, b, ""]] and later.stats["disk"] == 3
    memory_only = CondCache(None)
    memory_only.encode(teacher, [a, a], None)
    memory_only.encode(teacher, [a], None)
    assert calls[1:] == [[a]] and not any(p.suffix == ".tmp" for p in tmp_path.iterdir())


def test_the_key_is_the_text_encoder_not_the_dit(untrained_wan, tmp_path):
    """A student export keeps its teacher's encoder and trains its DiT: it shares the teacher's entries."""
    family = registry.family_of(untrained_wan)
    student = tmp_path / "student"
    shutil.copytree(untrained_wan, student)
    weights = student / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v + 1 for k, v in state.items()}, weights)
    assert family.encoder_hash(student) == family.encoder_hash(untrained_wan)
    (student / "tokenizer" / "tokenizer_config.json").write_text(
        (student / "tokenizer" / "tokenizer_config.json").read_text() + "\n")
    assert family.encoder_hash(student) != family.encoder_hash(untrained_wan)


def test_a_changed_text_encoder_misses(teacher, untrained_wan, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = CondCache(cache_dir).encode(teacher, PROMPTS, None).prompt_embeds
    other = tmp_path / "retrained"
    shutil.copytree(untrained_wan, other)
    weights = other / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, weights)
    retrained = _load(other)
    calls = _count_embeds(retrained, monkeypatch)
    cache = CondCache(cache_dir)
    second = cache.encode(retrained, PROMPTS, None).prompt_embeds
    assert calls == [PROMPTS] and cache.stats["disk"] == 0
    assert not torch.equal(first, second)
    assert torch.equal(second, retrained.encode(PROMPTS, None).prompt_embeds)


@pytest.mark.parametrize("damage", ["truncated", "another text's entry", "wrong dtype"])
def test_a_damaged_entry_is_named_dropped_and_embedded_again(teacher, tmp_path, monkeypatch, damage):
    a, b = PROMPTS
    cache = CondCache(tmp_path)
    want = cache.encode(teacher, [a, b], None).prompt_embeds
    encoder = cache.encoder_id(teacher)
    victim, donor = (cache.path(cache.key(encoder, teacher, text)) for text in (a, b))
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:40])
    elif damage == "another text's entry":
        shutil.copyfile(donor, victim)
    else:
        entry = load_file(victim)["embeds"]
        save_file({"embeds": entry.double()}, victim, metadata={"schema": "distill.cond/1", "encoder": encoder,
                                                                "text": a})
    calls = _count_embeds(teacher, monkeypatch)
    again = CondCache(tmp_path)
    with pytest.warns(UserWarning) as caught:
        got = again.encode(teacher, [a, b], None).prompt_embeds
    (warning,) = [w for w in caught if "conditioning cache entry" in str(w.message)]
    assert str(victim) in str(warning.message) and "embedding the text again" in str(warning.message)
    assert calls == [[a]] and torch.equal(got, want)
    with warnings.catch_warnings():  # the entry was replaced by a good one
        warnings.simplefilter("error")
        CondCache(tmp_path).encode(teacher, [a, b], None)
    assert calls == [[a]]


def test_bad_prompts_are_refused_as_the_teacher_refuses_them(teacher):
    cache = CondCache(None)
    with pytest.raises(ValueError, match="empty prompt list"):
        cache.encode(teacher, [], "")
    with pytest.raises(ValueError, match=r"positions \[1\] are empty"):
        cache.encode(teacher, [PROMPTS[0], " "], "")
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        cache.encode(teacher, [PROMPTS[0]], ["", ""])
