"""The Wan family (Wan 2.1 / 2.2 text-to-video in diffusers' `WanPipeline` layout; two experts for A14B).

    family.py       the plug-in (`WanFamily`, registered as "wan"): folder checks, networks, LoRA files, export
    teacher.py      a loaded checkpoint (`WanTeacher`): text, guided velocity, sampling, VAE
    experts.py      Wan 2.2 A14B's two experts behind one router (`WanExperts`)
    lora_format.py  LoRA keys in the original Wan names (ComfyUI, DiffSynth-Studio, LightX2V)
    tiny.py         the parts of the built-in tiny teachers
"""

from distill.teachers.base import Cond
from distill.teachers.wan.experts import WanExperts
from distill.teachers.wan.family import WanFamily
from distill.teachers.wan.teacher import (DTYPES, PromptWarning, WanTeacher, check_folder_split, check_video_size,
                                          pick_device, prompt_problems, seed_list, video_factors)

__all__ = ["Cond", "DTYPES", "PromptWarning", "WanExperts", "WanFamily", "WanTeacher", "check_folder_split",
           "check_video_size", "pick_device", "prompt_problems", "seed_list", "video_factors"]
