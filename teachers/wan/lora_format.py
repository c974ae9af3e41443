"""A Wan transformer LoRA from diffusers' key names into the original Wan key names.

diffusers (and peft) name a Wan LoRA after diffusers' module names:

    transformer.blocks.0.attn1.to_q.lora_A.weight          (scaled by lora_alpha / r, from the file's metadata)

ComfyUI, DiffSynth-Studio, LightX2V and Wan's own code use the module names of the original Wan checkpoints:

    diffusion_model.blocks.0.self_attn.q.lora_A.weight

and diffusers reads that form too: `WanPipeline.lora_state_dict` converts it back on load
(`_convert_non_diffusers_wan_lora_to_diffusers` in diffusers/loaders/lora_conversion_utils.py; `to_wan_keys` is its
inverse). The module names map as diffusers' single-file Wan converter maps the base weights:

    blocks.N.attn1.{to_q,to_k,to_v,to_out.0}   <->  blocks.N.self_attn.{q,k,v,o}
    blocks.N.attn2.{to_q,to_k,to_v,to_out.0}   <->  blocks.N.cross_attn.{q,k,v,o}
    blocks.N.ffn.net.0.proj, blocks.N.ffn.net.2 <->  blocks.N.ffn.0, blocks.N.ffn.2
    proj_out                                   <->  head.head
    condition_embedder.time_proj               <->  time_projection.1
    condition_embedder.{text,time}_embedder.linear_{1,2}  <->  {text,time}_embedding.{0,2}

The matrices keep peft's names `lora_A` (down) and `lora_B` (up): DiffSynth's and LightX2V's loaders read those,
ComfyUI and diffusers read them as well as `lora_down`/`lora_up`.

The scale alpha / r is folded into `lora_B`, and no `.alpha` tensors are written: DiffSynth and LightX2V ignore
them (they apply B·A times the user's strength), ComfyUI and diffusers apply alpha / r where they find one and 1
where they do not, so with the scale folded in every one of these loaders applies the same update,
W + (alpha / r)·B·A. (diffusers' converter also accepts `.alpha` only for the block layers, not for `head.head` or
the embeddings.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

WAN_LORA_FILE = "wan_lora.safetensors"

_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(attn1|attn2|ffn)\.(.+)")
_TOP = {
    "proj_out": "head.head",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
}
_FFN = {"net.0.proj": "0", "net.2": "2"}


def wan_module_name(module: str) -> str | None:
    """The original Wan name of a diffusers `WanTransformer3DModel` linear layer; None for a layer without one here."""
    if module in _TOP:
        return _TOP[module]
    match = _BLOCK.fullmatch(module)
    if match is None:
        return None
    block, part, rest = match.groups()
    if part == "ffn":
        return f"blocks.{block}.ffn.{_FFN[rest]}" if rest in _FFN else None
    attention = "self_attn" if part == "attn1" else "cross_attn"
    return f"blocks.{block}.{attention}.{_ATTENTION[rest]}" if rest in _ATTENTION else None


def to_wan_keys(state_dict: dict, alpha: float | None = None) -> dict:
    """A Wan transformer LoRA in diffusers/peft names (`[transformer.]<module>.lora_A.weight` and `.lora_B.weight`)
    as the original Wan names (`diffusion_model.<wan module>.lora_A.weight` and `.lora_B.weight`).

    `alpha` is the adapter's lora_alpha: each layer's scale alpha / r (r: that layer's rank, lora_A's rows) is
    folded into its lora_B, so that loaders which ignore alpha apply the same update. None: the weights are
    applied unscaled, as diffusers does with a LoRA file that carries no alpha. Raises ValueError naming the first
    key that has no Wan name (an image-to-video or VACE layer, a LoRA bias, a DoRA magnitude, ...) or whose pair
    is missing; nothing is dropped."""
    if alpha is not None and not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
    modules: dict[str, dict[str, object]] = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix("transformer.")
        module, sep, matrix = name.rpartition(".lora_")
        wan = wan_module_name(module) if sep and matrix in ("A.weight", "B.weight") else None
        if wan is None:
            raise ValueError(f"LoRA key {key!r} has no name in the original Wan format (mapped: the attention "
                             f"projections, the FFN, proj_out, time_proj and the text/time embedders, as "
                             f"lora_A.weight / lora_B.weight)")
        modules.setdefault(module, {})[matrix[0]] = (key, tensor)
    out = {}
    for module, pair in modules.items():
        if set(pair) != {"A", "B"}:
            key = next(iter(pair.values()))[0]
            raise ValueError(f"LoRA key {key!r} has no lora_{'B' if 'A' in pair else 'A'} partner")
        (key_a, down), (key_b, up) = pair["A"], pair["B"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"LoRA keys {key_a!r} {tuple(down.shape)} and {key_b!r} {tuple(up.shape)} are not "
                             f"a linear layer's down and up matrices")
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        wan = f"diffusion_model.{wan_module_name(module)}"
        out[f"{wan}.lora_A.weight"] = down.contiguous()
        out[f"{wan}.lora_B.weight"] = (up if scale == 1.0 else (up.float() * scale).to(up.dtype)).contiguous()
    return out


def write_wan_lora(lora_file: Path, dest: Path) -> int:
    """Write the diffusers-format LoRA file `lora_file` (as `WanPipeline.save_lora_weights` writes it, its alpha in
    the safetensors metadata) to `dest` in the original Wan key format. Returns the number of layers."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora_file), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    config = json.loads(raw) if raw else {}
    for unsupported in ("transformer.use_rslora", "transformer.use_dora", "transformer.alpha_pattern"):
        if config.get(unsupported):
            raise ValueError(f"{str(lora_file)!r}: {unsupported.removeprefix('transformer.')}="
                             f"{config[unsupported]!r} has no equivalent in the Wan LoRA format")
    try:
        wan = to_wan_keys(state, alpha=config.get("transformer.lora_alpha"))
    except ValueError as err:
        raise ValueError(f"{str(lora_file)!r}: {err}") from None
    # No "lora_adapter_metadata" here: diffusers would apply its lora_alpha on top of the folded scale.
    save_file(wan, str(dest), metadata={"format": "pt"})
    return len(wan) // 2
