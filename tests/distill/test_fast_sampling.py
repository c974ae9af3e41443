"""`distill sample` and `distill eval` with cached conditioning and `--compile`: the second call reads every prompt
embedding back from the cache and writes the same clip; `--compile` on a device that cannot compile is one line,
exit 2, before any weights load."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distill.cli import main
from distill.teachers import registry

PROMPT = "a red circle moving left slowly on a black background"


def _count_embeds(folder, monkeypatch) -> list[list[str]]:
    """Every text the loaded teachers of `folder`'s family embed."""
    family = registry.family_of(folder)
    real_load, calls = family.load, []

    def load(*args, **kwargs):
        teacher = real_load(*args, **kwargs)
        embed = teacher.embed
        teacher.embed = lambda texts: (calls.append(list(texts)), embed(texts))[1]
        return teacher
    monkeypatch.setattr(family, "load", load)
    return calls


def test_a_second_sample_call_reads_its_embeddings_from_the_cache(untrained_wan, tmp_path, monkeypatch):
    calls = _count_embeds(untrained_wan, monkeypatch)
    args = ["sample", "--teacher", str(untrained_wan), "--prompt", PROMPT, "--prompt", PROMPT, "--steps", "1",
            "--frames", "5", "--height", "32", "--width", "32", "--formats", "png", "--no-progress",
            "--cond-cache", str(tmp_path / "cond")]
    assert main([*args, "--out", str(tmp_path / "one.png")]) == 0
    assert calls == [[PROMPT, ""]]  # the prompt once for both clips, and the negative prompt
    assert len(list((tmp_path / "cond").glob("*.safetensors"))) == 2
    assert main([*args, "--out", str(tmp_path / "two.png")]) == 0
    assert calls == [[PROMPT, ""]]  # the second call embedded nothing
    for i in (0, 1):
        one, two = (np.asarray(Image.open(tmp_path / f"{name}-{i}.png")) for name in ("one", "two"))
        assert np.array_equal(one, two)


def test_sample_refuses_compile_in_one_line_before_loading(no_compiler, untrained_wan, tmp_path, monkeypatch,
                                                           capsys):
    from distill.teachers import config

    monkeypatch.setattr(config, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
    rc = main(["sample", "--teacher", str(untrained_wan), "--prompt", "a red circle", "--compile",
               "--out", str(tmp_path / "clip.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("distill sample: error: --compile: torch.compile (inductor) cannot compile on cpu")
    assert "No working C++ compiler" in err[0] and "run without --compile" in err[0]


def test_eval_refuses_compile_in_one_line_before_loading_a_model(no_compiler, tmp_path, monkeypatch, capsys):
    from distill.eval.harness import Harness

    monkeypatch.setattr(Harness, "_load", lambda self, source: pytest.fail("a model was loaded"))
    rc = main(["eval", "--model", "teacher@4", "--out", str(tmp_path / "eval"), "--compile"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "key 'compile' (--compile): torch.compile (inductor) cannot compile on cpu here: InvalidCxxCompiler" \
        in err[0]


def _decoder(folder, out, channels_off: int = 0):
    """A small random-weight VideoDecoder for the latents of the teacher in `folder`, saved in `out`."""
    import torch

    from distill.teachers.decoders import decoder_for

    family = registry.family_of(folder)
    factors = family.video_factors(folder)
    torch.manual_seed(0)
    decoder_for(family.latent_channels(family.dit_config(folder)) + channels_off, factors.temporal, factors.spatial,
                width=8, depth=1).save_pretrained(out)
    return out


def test_sample_decodes_with_a_distilled_decoder(untrained_wan, tmp_path, monkeypatch):
    from distill.teachers.decoders import VideoDecoder

    decoder = _decoder(untrained_wan, tmp_path / "decoder")
    seen, real = [], VideoDecoder.decode
    monkeypatch.setattr(VideoDecoder, "decode", lambda self, latents: (seen.append(tuple(latents.shape)),
                                                                      real(self, latents))[1])
    args = ["sample", "--teacher", str(untrained_wan), "--prompt", PROMPT, "--steps", "1", "--frames", "5",
            "--height", "32", "--width", "32", "--formats", "png", "--no-progress", "--no-cond-cache"]
    assert main([*args, "--out", str(tmp_path / "vae.png")]) == 0 and seen == []
    assert main([*args, "--decoder", str(decoder), "--out", str(tmp_path / "decoder.png")]) == 0
    assert len(seen) == 1 and seen[0][2] == 2  # one batch of 2 latent frames: 5 frames
    vae, ours = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("vae", "decoder"))
    assert vae.shape == ours.shape and not np.array_equal(vae, ours)  # same clip size, another decoder's pixels


def test_sample_refuses_a_decoder_for_other_latents_before_loading(untrained_wan, tmp_path, monkeypatch, capsys):
    from distill.teachers import config

    decoder = _decoder(untrained_wan, tmp_path / "decoder", channels_off=1)
    monkeypatch.setattr(config, "load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
    rc = main(["sample", "--teacher", str(untrained_wan), "--prompt", PROMPT, "--decoder", str(decoder),
               "--out", str(tmp_path / "clip.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--decoder" in err[0] and "latent_channels" in err[0] and "config.json" in err[0]
