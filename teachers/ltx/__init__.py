"""The LTX-Video family (diffusers' `LTXPipeline` layout: `LTXVideoTransformer3DModel`, `AutoencoderKLLTXVideo`, T5).

    family.py    the plug-in (`LTXFamily`, registered as "ltx"): folder checks, networks, LoRA files, export
    teacher.py   a loaded checkpoint (`LTXTeacher`): text (mask inside the embeddings), guided velocity on unpacked
                 latents, the stock pipeline's schedule, VAE
    tiny.py      a tiny random-weight LTXPipeline built offline (tests)
"""

from distill.teachers.ltx.family import LTXFamily
from distill.teachers.ltx.teacher import (
    LTXTeacher,
    check_video_size,
    text_mask,
    video_factors,
)

__all__ = ["LTXFamily", "LTXTeacher", "check_video_size", "text_mask", "video_factors"]
