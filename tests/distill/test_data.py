"""Prompt sources through `datasets`, and the resumable example order."""

import json

import datasets
import pytest
import torch

from distill.core.config import ConfigError
from distill.data import TrainData, load_prompts, trim
from distill.train_config import DataConfig

PROMPTS = ["a red disc moving left", "a blue plank moving up", "a green star"]


def test_prompts_from_txt_jsonl_parquet_and_a_saved_dataset(tmp_path):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    datasets.Dataset.from_dict({"prompt": PROMPTS}).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_dict({"prompt": PROMPTS}).save_to_disk(str(tmp_path / "saved"))
    assert load_prompts(str(tmp_path / "p.txt")) == PROMPTS
    assert load_prompts(str(tmp_path / "p.jsonl"), column="text") == PROMPTS
    assert load_prompts(str(tmp_path / "p.parquet")) == PROMPTS
    assert load_prompts(str(tmp_path / "saved")) == PROMPTS


def test_bad_prompt_sources_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.txt"))
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ConfigError, match="no column 'prompt'.*'text'"):
        load_prompts(str(tmp_path / "p.jsonl"))
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    with pytest.raises(ConfigError, match="'.csv'"):
        load_prompts(str(tmp_path / "p.csv"))
    (tmp_path / "e.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": " "}) + "\n")
    with pytest.raises(ConfigError, match="rows \\[1\\]"):
        load_prompts(str(tmp_path / "e.jsonl"))


def order(size: int, seed: int = 0) -> TrainData:
    data = TrainData.__new__(TrainData)  # the order needs only the config and the size
    data.cfg, data.prompts = DataConfig(seed=seed), ["p"] * size
    return data


def test_order_is_a_pure_function_of_position_and_covers_each_epoch():
    data = order(10)
    whole = data.indices(0, 30).tolist()
    pieces = data.indices(0, 7).tolist() + data.indices(7, 13).tolist() + data.indices(20, 10).tolist()
    assert whole == pieces  # a resumed run continues with exactly the same examples
    for epoch in range(3):
        assert sorted(whole[10 * epoch:10 * epoch + 10]) == list(range(10))
    assert whole[:10] != whole[10:20]  # a new permutation each epoch
    assert order(10, seed=1).indices(0, 10).tolist() != whole[:10]


def test_trim_drops_only_the_zero_padding():
    e = torch.zeros(8, 4)
    e[:3] = torch.randn(3, 4)
    assert trim(e).shape == (3, 4) and torch.equal(trim(e), e[:3])


def test_a_video_folder_with_captions_gives_clips_at_the_teachers_size(tmp_path):
    from distill import toyworld
    from distill.core.media import write_mp4
    from distill.videos import VideoSource, fit_clip

    attrs = toyworld.train_attributes()[:2]
    rows = []
    for i, a in enumerate(attrs):
        write_mp4(tmp_path / f"{i}.mp4", toyworld.render(a, seed=i, frames=21, height=72, width=96), fps=8)
        rows.append(json.dumps({"file_name": f"{i}.mp4", "prompt": a.caption()}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    source = VideoSource(str(tmp_path), "prompt", frames=17, height=64, width=64)
    assert source.prompts == [a.caption() for a in attrs]
    clip = source.clip(1)
    assert clip.shape == (17, 64, 64, 3) and clip.dtype.name == "uint8"
    # the first 17 frames of the centre 72x72 square, resized: per-frame mean colours match the original's there
    original = toyworld.render(attrs[1], seed=1, frames=21, height=72, width=96)[:17, :, 12:84].astype(float)
    assert abs(clip.astype(float).mean(axis=(1, 2)) - original.mean(axis=(1, 2))).max() < 6

    with pytest.raises(ConfigError, match="has 21 frames, the teacher's clips need 33"):
        VideoSource(str(tmp_path), "prompt", frames=33, height=64, width=64).clip(0)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.mp4", "prompt": "x"}) + "\n")
    with pytest.raises(ConfigError, match="'gone.mp4' does not exist"):
        VideoSource(str(tmp_path), "prompt", frames=17, height=64, width=64)
    with pytest.raises(ConfigError, match="expected RGB frames"):
        fit_clip(clip[..., 0], 17, 64, 64, "x")
