import os

# Nothing in the tests may reach the network: hub lookups fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def untrained_wan(tmp_path_factory):
    """A real, untrained tiny WanPipeline folder (seeded): for tests of plumbing, not of quality (4x4 patches and
    two layers keep it cheap)."""
    from diffusers import WanPipeline

    from distill.toyworld.tiny_teacher import TinyWanSpec, build_components

    folder = tmp_path_factory.mktemp("untrained-wan")
    WanPipeline(**build_components(TinyWanSpec(dit_patch=(1, 4, 4), dit_layers=2), seed=0)).save_pretrained(folder)
    return folder
