import pytest

from distill.core.config import CONFIG_DIR, ConfigError, load

from distill.teachers.config import TeacherConfig, load_teacher_config
from distill.train_config import load_train_config


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


def test_checkpoints_from_before_the_grid_resume_on_the_legacy_grid_only():
    """A checkpoint's config.yaml written before `recipe.sampler.grid` (and DMD2's level keys) existed lacks them:
    it was trained on the legacy values, so it resumes with them set and is refused with the new defaults."""
    from distill.train_config import fingerprint, with_legacy_values

    for name, legacy in (("consistency-tiny", ["recipe.sampler.grid=euler"]),
                         ("dmd2-tiny", ["recipe.sampler.grid=euler", "recipe.t_sampling=range-then-shift",
                                        "recipe.critic_full_range=false"])):
        new = load_train_config(f"configs/recipes/{name}.yaml")
        saved = new.model_dump(mode="json")
        del saved["recipe"]["sampler"]["grid"]
        for key in ("t_sampling", "critic_full_range", "fresh_critic_batch"):
            saved["recipe"].pop(key, None)
        old = type(new).model_validate(with_legacy_values(saved))
        assert old.recipe.sampler.grid == "euler"
        assert fingerprint(old) == fingerprint(load_train_config(f"configs/recipes/{name}.yaml", legacy))
        assert fingerprint(old) != fingerprint(new)
