import json

import pytest

from distill.teachers.resolve import TeacherNotFound, builtin_names, resolve


def test_builtin_tiny_wan_is_shipped():
    assert "tiny-wan" in builtin_names()
    assert (resolve("builtin:tiny-wan") / "model_index.json").is_file()


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(TeacherNotFound, match="builtin:nope.*builtin:tiny-wan"):
        resolve("builtin:nope")


def test_missing_folder(tmp_path):
    with pytest.raises(TeacherNotFound, match="no such folder.*builtin:tiny-wan"):
        resolve(str(tmp_path / "missing"))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(TeacherNotFound, match="no model_index.json"):
        resolve(str(tmp_path))


def test_non_wan_pipeline_folder(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(TeacherNotFound, match="'StableDiffusionPipeline', which no registered family serves; served: {.*'WanPipeline': 'wan'"):
        resolve(str(tmp_path))


def test_wan_folder_missing_components(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    (tmp_path / "transformer").mkdir()
    with pytest.raises(TeacherNotFound, match="lacks the component folders.*'vae'"):
        resolve(str(tmp_path))


def test_hub_id_while_offline_is_refused_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(TeacherNotFound, match="Wan-AI/Wan2.1-T2V-1.3B-Diffusers.*offline"):
        resolve("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
