import pytest

from distill.core.config import CONFIG_DIR, ConfigError, load

from distill.teachers.config import TeacherConfig, load_teacher_config


def test_shipped_teacher_configs_load():
    for path in sorted((CONFIG_DIR / "teachers").glob("*.yaml")):
        cfg = load(TeacherConfig, path)
        assert cfg.name == path.stem
    assert load_teacher_config("wan2.1-t2v-1.3b").sampler.shift == 8.0


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: x\nsource: builtin:tiny-wan\nsampler: {steps: 4, stpes: 3}\n")
    with pytest.raises(ConfigError) as err:
        load(TeacherConfig, path)
    assert "sampler.stpes" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: x\nsource: builtin:tiny-wan\nvideo: {frames: many}\n")
    with pytest.raises(ConfigError, match=r"video\.frames.*'many'"):
        load(TeacherConfig, path)


def test_overrides_apply_and_are_validated(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: x\nsource: builtin:tiny-wan\n")
    cfg = load(TeacherConfig, path, ["sampler.steps=4", "sampler.name=euler", "negative_prompt=blurry"])
    assert (cfg.sampler.steps, cfg.sampler.name, cfg.negative_prompt) == (4, "euler", "blurry")
    with pytest.raises(ConfigError, match="command-line override.*sampler.nope"):
        load(TeacherConfig, path, ["sampler.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load(TeacherConfig, path, ["sampler.steps"])
    with pytest.raises(ConfigError, match="sampler.steps"):
        load(TeacherConfig, path, ["sampler.steps=0"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(TeacherConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(TeacherConfig, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(TeacherConfig, listy)
