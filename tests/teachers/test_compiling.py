"""`--compile` (teachers/compiling.py): a device that cannot compile is refused naming why (the commands' one line:
tests/distill/test_fast_sampling.py); a compiled DiT samples the eager clips (slow: it compiles)."""

from __future__ import annotations

import pytest
import torch

from distill.teachers import compiling, registry
from distill.teachers.compiling import CompileUnavailable, check_compile, compile_dit


def test_the_refusal_names_the_device_and_the_cause(no_compiler):
    with pytest.raises(CompileUnavailable, match=r"^torch.compile \(inductor\) cannot compile on cpu here: "
                                                 r"InvalidCxxCompiler: No working C\+\+ compiler found"):
        check_compile("cpu")


def test_suppressed_dynamo_errors_are_refused_not_run_eager(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(compiling, "_checked", {})
    with torch._dynamo.config.patch(suppress_errors=True), pytest.raises(CompileUnavailable,
                                                                         match="suppress_errors is set"):
        check_compile("cpu")


@pytest.mark.slow  # compiles the tiny DiT with inductor: 15 s on 2 idle cores, over 10 min beside a training job
@pytest.mark.timeout(1800)
def test_a_compiled_dit_samples_the_eager_clip(untrained_wan):
    family = registry.family_of(untrained_wan)
    eager = family.load(untrained_wan, torch.float32, torch.device("cpu"), 16)
    compiled = family.load(untrained_wan, torch.float32, torch.device("cpu"), 16)
    check_compile("cpu")
    assert compile_dit(compiled) == ["transformer"]
    assert type(compiled.dit) is type(eager.dit)  # compiled in place: the network keeps its class
    kwargs = dict(steps=3, guidance=5.0, seed=[1, 2], sampler="euler", frames=5, height=32, width=32)
    prompts = ["a red circle", "a blue square"]
    want = eager.sample(prompts, **kwargs)
    got = compiled.sample(prompts, **kwargs)
    assert (got - want).abs().max().item() <= 1e-4
