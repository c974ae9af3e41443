"""Sampling with the DiT under `torch.compile`: checked first, applied in place, never a silent fallback.

`check_compile(device)` compiles and runs a tiny function on the device with the backend the DiT will use
(inductor: a C++ compiler on CPU, Triton on CUDA) and raises `CompileUnavailable`, naming why, when it cannot: a
command refuses `--compile` with that one line before any weights load, instead of failing an hour into an eval or
quietly running eager. Its constant differs per process, so the compiler really runs and a kernel cached by an
earlier process cannot hide a compiler that has gone.

`compile_decoder(decoder)` compiles a distilled decoder the same way.

`compile_dit(teacher)` compiles each expert DiT of the teacher's velocity network in place (`nn.Module.compile`):
the network keeps its class (an expert router stays a router and routes eagerly; a DiT stays the family's DiT), so
everything that inspects it works as before. Dynamo's `suppress_errors` stays off: a graph that fails to compile
raises rather than running eager.
"""

from __future__ import annotations

import os

import torch
import torch._dynamo

from distill.teachers.base import Teacher

BACKEND = "inductor"
_checked: dict[str, str | None] = {}  # device type -> why it cannot compile (None: it can)


class CompileUnavailable(ValueError):
    """torch.compile cannot compile on this device here (no C++ compiler for inductor on CPU, no Triton, ...)."""


def _trial(x: torch.Tensor, c: float) -> torch.Tensor:
    return torch.sin(x) * c + x.square()


def check_compile(device: torch.device | str) -> None:
    """Raise CompileUnavailable naming why `torch.compile` cannot compile on `device`; once per device type."""
    device = torch.device(device)
    if device.type not in _checked:
        _checked[device.type] = _why_not(device)
    why = _checked[device.type]
    if why is not None:
        raise CompileUnavailable(f"torch.compile ({BACKEND}) cannot compile on {device.type} here: {why}")


def _why_not(device: torch.device) -> str | None:
    if torch._dynamo.config.suppress_errors:
        return ("torch._dynamo.config.suppress_errors is set, so a graph that fails to compile would run eager "
                "unnoticed; unset it (TORCHDYNAMO_SUPPRESS_ERRORS)")
    c = 1.0 + (os.getpid() % 9973) / 1e5  # a kernel no earlier process compiled: the compiler itself runs
    x = torch.linspace(-1.0, 1.0, 64, device=device)
    try:
        got = torch.compile(_trial, backend=BACKEND, fullgraph=True, dynamic=False)(x, c)
    except Exception as err:  # BackendCompilerFailed wrapping InvalidCxxCompiler, a missing Triton, ...
        return _reason(err)
    want = _trial(x, c)
    if not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
        return f"a trial function compiled to wrong numbers (max abs diff {(got - want).abs().max().item():.3g})"
    return None


def _reason(err: BaseException) -> str:
    """The innermost error's type and first line (inductor wraps the real cause in BackendCompilerFailed)."""
    inner = err
    while True:
        nxt = getattr(inner, "inner_exception", None) or inner.__cause__
        if nxt is None or nxt is inner:
            break
        inner = nxt
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith("backend=")), lines[0] if lines else "")
    return f"{type(inner).__name__}: {first[:300]}" if first else type(inner).__name__


def compile_dit(teacher: Teacher) -> list[str]:
    """Compile every expert DiT of `teacher.dit` in place (call `check_compile` first); returns their components."""
    if teacher.dit is None:
        raise ValueError("this teacher's DiT was dropped (drop_dit); there is nothing to compile")
    done = []
    for component, expert in teacher.family.experts_of(teacher.dit):
        expert.compile(backend=BACKEND)
        done.append(component)
    return done


def compile_decoder(decoder: torch.nn.Module) -> None:
    """Compile a distilled video decoder in place (call `check_compile` first): its whole-clip decode and the steps
    of its stream (the first latent frame and the later ones) are separate graphs, compiled on first use."""
    decoder.compile(backend=BACKEND)
