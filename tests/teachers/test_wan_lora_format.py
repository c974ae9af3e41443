"""The LoRA in the original Wan key format (`lora/wan_lora.safetensors` of an export): diffusers' own loader reads it
back to the adapter of the diffusers-format file, both give the same clip, and a layer without a Wan name is
refused by name."""

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig as PeftLoraConfig
from safetensors import safe_open
from safetensors.torch import load_file

from distill.teachers.registry import family
from distill.teachers.wan.lora_format import WAN_LORA_FILE, to_wan_keys, write_wan_lora

LORA_FILE = "pytorch_lora_weights.safetensors"  # what WanPipeline.save_lora_weights names it
RANK, ALPHA = 4, 16.0  # scale alpha / r = 4: a forgotten or doubled scale shows
# the default targets, and the layers outside the blocks that have a Wan name too
TARGETS = [*family("wan").lora_targets, "proj_out", "time_proj", "linear_1", "linear_2"]


@pytest.fixture(scope="module")
def lora_folder(untrained_wan, tmp_path_factory):
    """A peft LoRA on the untrained tiny Wan DiT, with nonzero lora_B (peft starts it at zero), written by the
    project's own writer (the family's `save_lora`, as training does) and converted by `write_wan_lora`, as export does."""
    transformer = WanTransformer3DModel.from_pretrained(untrained_wan / "transformer", torch_dtype=torch.float32)
    transformer.add_adapter(PeftLoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=True))
    g = torch.Generator().manual_seed(0)
    weights = {}
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            weights[name] = 0.05 * torch.randn(p.shape, generator=g) if "lora_B" in name else p.detach().clone()
    folder = tmp_path_factory.mktemp("lora")
    family("wan").save_lora(folder, weights, {"r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                                              "target_modules": TARGETS})
    layers = write_wan_lora(folder / LORA_FILE, folder / WAN_LORA_FILE)
    assert layers == len(weights) // 2 == 2 * 10 + 6  # 2 blocks x (4 + 4 attention + 2 FFN), 6 outside
    return folder


def test_wan_file_has_the_original_wan_names(lora_folder):
    with safe_open(lora_folder / WAN_LORA_FILE, "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    for key in ("blocks.0.self_attn.q", "blocks.0.self_attn.o", "blocks.1.cross_attn.k", "blocks.1.cross_attn.o",
                "blocks.0.ffn.0", "blocks.1.ffn.2", "head.head", "time_projection.1", "text_embedding.0",
                "text_embedding.2", "time_embedding.0", "time_embedding.2"):
        assert {f"diffusion_model.{key}.lora_A.weight", f"diffusion_model.{key}.lora_B.weight"} <= keys, key
    assert all(k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert len(keys) == len(load_file(lora_folder / LORA_FILE))
    assert "lora_adapter_metadata" not in metadata  # diffusers would apply lora_alpha on top of the folded scale


def test_diffusers_reads_the_wan_file_back_to_the_same_adapter(lora_folder, untrained_wan):
    ours = WanPipeline.lora_state_dict(str(lora_folder), weight_name=LORA_FILE)
    theirs = WanPipeline.lora_state_dict(str(lora_folder), weight_name=WAN_LORA_FILE)  # diffusers' Wan conversion
    assert theirs.keys() == ours.keys()
    scale = ALPHA / RANK
    for key in ours:
        if ".lora_A." in key:
            assert torch.equal(theirs[key], ours[key]), key
        else:  # the scale lives in lora_B, so the update B·A is the same
            assert torch.allclose(theirs[key], scale * ours[key], rtol=0, atol=1e-7), key

    # A loader that ignores alpha (DiffSynth, LightX2V: W + B·A) gets the weight diffusers fuses from the other file.
    pipe = WanPipeline.from_pretrained(untrained_wan, torch_dtype=torch.float32)
    base = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(str(lora_folder), weight_name=LORA_FILE)
    pipe.fuse_lora(lora_scale=1.0)
    fused = pipe.transformer.state_dict()
    wan = load_file(lora_folder / WAN_LORA_FILE)
    for diffusers_name, wan_name in [("blocks.0.attn1.to_q", "blocks.0.self_attn.q"),
                                     ("blocks.1.attn2.to_out.0", "blocks.1.cross_attn.o"),
                                     ("blocks.1.ffn.net.0.proj", "blocks.1.ffn.0"), ("proj_out", "head.head")]:
        delta = wan[f"diffusion_model.{wan_name}.lora_B.weight"] @ wan[f"diffusion_model.{wan_name}.lora_A.weight"]
        assert delta.abs().max() > 1e-3, wan_name
        got = fused[f"{diffusers_name}.base_layer.weight"] if f"{diffusers_name}.base_layer.weight" in fused \
            else fused[f"{diffusers_name}.weight"]
        assert torch.allclose(got, base[f"{diffusers_name}.weight"] + delta, atol=1e-6), diffusers_name


def _clip(pipe, lora_folder=None, weight_name=None):
    if lora_folder is not None:
        pipe.load_lora_weights(str(lora_folder), weight_name=weight_name, adapter_name="student")
    clip = pipe(prompt="a red disc moving left slowly on a black background", num_inference_steps=2,
                guidance_scale=1.0, num_frames=5, height=32, width=32, max_sequence_length=16, output_type="np",
                generator=torch.Generator().manual_seed(0)).frames[0]
    if lora_folder is not None:
        pipe.delete_adapters("student")
    return torch.from_numpy(clip)


def test_both_files_give_the_same_clip(lora_folder, untrained_wan):
    pipe = WanPipeline.from_pretrained(untrained_wan, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base = _clip(pipe)
    diffusers_clip = _clip(pipe, lora_folder, LORA_FILE)
    wan_clip = _clip(pipe, lora_folder, WAN_LORA_FILE)
    assert (diffusers_clip - base).abs().max() > 1e-2  # the adapter changes the clip
    assert (wan_clip - diffusers_clip).abs().max() <= 1e-5


def test_unmappable_keys_are_refused_by_name():
    a, b = torch.ones(2, 8), torch.ones(8, 2)
    good = {"transformer.blocks.0.attn1.to_q.lora_A.weight": a, "transformer.blocks.0.attn1.to_q.lora_B.weight": b}
    assert set(to_wan_keys(good)) == {"diffusion_model.blocks.0.self_attn.q.lora_A.weight",
                                      "diffusion_model.blocks.0.self_attn.q.lora_B.weight"}
    assert torch.equal(to_wan_keys(good, alpha=4.0)["diffusion_model.blocks.0.self_attn.q.lora_B.weight"], 2 * b)
    for bad in ("transformer.blocks.0.attn2.add_k_proj.lora_A.weight",  # image-to-video layer
                "transformer.patch_embedding.lora_A.weight",
                "transformer.blocks.0.attn1.to_q.lora_B.bias",  # a LoRA bias
                "transformer.blocks.0.attn1.to_q.lora_magnitude_vector",  # DoRA
                "blocks.0.norm2.weight"):
        with pytest.raises(ValueError, match="no name in the original Wan format") as err:
            to_wan_keys({**good, bad: a})
        assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="has no lora_B partner") as err:
        to_wan_keys({"blocks.1.ffn.net.2.lora_A.weight": a})
    assert "'blocks.1.ffn.net.2.lora_A.weight'" in str(err.value)
