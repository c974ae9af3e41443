import os

# Nothing in the tests may reach the network: hub lookups fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `distill sample` keeps prompt embeddings in the user's cache by default: the tests' go to a folder of their own.
if "DISTILL_CACHE" not in os.environ:
    import tempfile

    os.environ["DISTILL_CACHE"] = tempfile.mkdtemp(prefix="distill-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def untrained_wan(tmp_path_factory):
    """A real, untrained tiny WanPipeline folder (seeded): for tests of plumbing, not of quality (4x4 patches and
    two layers keep it cheap)."""
    from diffusers import WanPipeline

    from distill.teachers.wan.tiny import TinyWanSpec, build_components
    from distill.toyworld import vocabulary

    folder = tmp_path_factory.mktemp("untrained-wan")
    WanPipeline(**build_components(TinyWanSpec(dit_patch=(1, 4, 4), dit_layers=2), vocabulary(), seed=0)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def untrained_wan_a14b(tmp_path_factory):
    """A real, untrained tiny two-expert WanPipeline folder (Wan 2.2 A14B's layout: `transformer` for t >= 0.875,
    `transformer_2` below), its experts seeded differently so that a wrong switch shows."""
    from diffusers import WanPipeline

    from distill.teachers.wan.tiny import TinyWanSpec, build_components
    from distill.toyworld import vocabulary

    spec = TinyWanSpec(dit_patch=(1, 4, 4), dit_layers=2)
    parts = build_components(spec, vocabulary(), seed=0)
    low = build_components(spec, vocabulary(), seed=1)["transformer"]
    folder = tmp_path_factory.mktemp("untrained-wan-a14b")
    WanPipeline(**parts, transformer_2=low, boundary_ratio=0.875).save_pretrained(folder)
    return folder


@pytest.fixture
def no_compiler(monkeypatch):
    """torch.compile as it fails without a C++ compiler: inductor's InvalidCxxCompiler inside dynamo's wrapper."""
    import torch
    from torch._inductor.exc import InvalidCxxCompiler

    from distill.teachers import compiling

    def compile_fails(fn, **kwargs):
        def run(*args):
            try:
                raise InvalidCxxCompiler()
            except InvalidCxxCompiler as err:
                raise RuntimeError("backend='inductor' raised:\nInvalidCxxCompiler: ...") from err
        return run
    monkeypatch.setattr(compiling, "_checked", {})
    monkeypatch.setattr(torch, "compile", compile_fails)
