"""Faults on the input side of export, sample, plan and train, tried as a hostile user would: a truncated student
is refused by name instead of exported, a full disk ends an export in one line with nothing left behind, and a bad
model folder, an absurd plan, a batch larger than the dataset or a non-UTF-8 file each get one line that names the
cause, before any work. Cheap: the checkpoint is assembled from the untrained tiny Wan, nothing trains."""

import errno
import json
import shutil
import struct

import pytest
import yaml

from distill.cli import main
from distill.core.config import REPO_ROOT, ConfigError
from tests.disks import small_tmpfs

CONFIG = REPO_ROOT / "configs" / "recipes" / "consistency-tiny.yaml"


@pytest.fixture
def checkpoint(untrained_wan, tmp_path):
    """A full-student checkpoint as `distill train` writes one (meta.json, config.yaml, student/), its student a
    copy of the untrained teacher's DiT."""
    folder = tmp_path / "run" / "checkpoints" / "step-000001"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"teacher": str(untrained_wan), "step": 1, "recipe": "consistency",
                                                  "sampler": {"name": "consistency", "steps": 2, "shift": 3.0}}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"teacher": str(untrained_wan), "student": {}}))
    shutil.copytree(untrained_wan / "transformer", folder / "student")
    (folder.parent / "latest").write_text(folder.name)
    return folder


def _error(capsys) -> str:
    """The one error line (warnings beside it, e.g. a hand-made checkpoint without a manifest, are not errors)."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if ": warning: " not in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_an_intact_checkpoint_exports(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("damage", ["truncated", "cut in its header", "sizes that disagree", "not JSON config"])
def test_a_damaged_student_is_refused_by_name_and_nothing_is_written(checkpoint, tmp_path, capsys, damage):
    weights = checkpoint / "student" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    named = weights
    if damage == "truncated":  # before the fix: copied as it was, exit 0
        weights.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "cut in its header":
        weights.write_bytes(data[:100])
    elif damage == "sizes that disagree":  # a header whose one tensor claims a shape its bytes do not hold
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + length])
        key = next(k for k in header if k != "__metadata__")
        header[key]["shape"] = [2 * d for d in header[key]["shape"]] or [2]
        text = json.dumps(header).encode()
        text += b" " * (length - len(text)) if len(text) <= length else b""
        weights.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    else:
        named = checkpoint / "student" / "config.json"
        named.write_text("{\"_class_name\": ")
    out = tmp_path / "export"
    assert main(["export", str(checkpoint.parent.parent), "--out", str(out)]) == 2
    line = _error(capsys)
    assert line.startswith("distill export: error: export: ") and str(named) in line
    assert not out.exists() and not list(tmp_path.glob(".tmp-export-*"))


def test_a_full_disk_ends_an_export_in_one_line_and_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    import distill.export

    real_copy = distill.export._copy_tree
    copies = []

    def copy_then_fill(src, dst):
        copies.append(dst)
        real_copy(src, dst)
        if len(copies) == 2:  # a few components are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(dst / "model.safetensors"))
    monkeypatch.setattr(distill.export, "_copy_tree", copy_then_fill)
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    line = _error(capsys)
    assert line.startswith("distill export: error: disk full writing the export ") and " free on " in line
    assert "it needs about" in line and "partial output was removed" in line
    assert not out.exists() and not list(tmp_path.glob(".tmp-export-*"))
    assert (checkpoint / "student" / "diffusion_pytorch_model.safetensors").is_file()  # the run is untouched


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path / "small-disk", "4m") as mount:
        yield mount


def test_an_export_onto_a_real_full_disk_is_one_line_and_leaves_it_empty(checkpoint, small_disk, capsys):
    out = small_disk / "export"  # the export needs about 14 MiB; the disk has 4
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    line = _error(capsys)
    assert line.startswith("distill export: error: disk full writing the export ") and str(small_disk) in line
    assert list(small_disk.iterdir()) == [] and shutil.disk_usage(small_disk).used == 0


# --- model folders ------------------------------------------------------------------------------------------------
def _broken_folder(untrained_wan, tmp_path, edit):
    folder = tmp_path / "teacher"
    shutil.copytree(untrained_wan, folder)
    edit(folder)
    return folder


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit,message", [
    (lambda f: _edit_json(f / "model_index.json", vae=["diffusers", "AutoencoderKL"]),
     "model_index.json names ['diffusers', 'AutoencoderKL'] for 'vae'; family 'wan' loads AutoencoderKLWan there"),
    (lambda f: _edit_json(f / "model_index.json", transformer=["diffusers", "UNet2DModel"]),
     "names ['diffusers', 'UNet2DModel'] for 'transformer'"),
    (lambda f: _edit_json(f / "transformer" / "config.json", num_attention_heads="2"),
     "config.json' key 'num_attention_heads' is \"2\" (str); WanTransformer3DModel takes an int there"),
    (lambda f: _edit_json(f / "transformer" / "config.json", patch_size=2),
     "key 'patch_size' is 2 (int); WanTransformer3DModel takes a tuple there"),
    (lambda f: _edit_json(f / "vae" / "config.json", z_dim=True),
     "key 'z_dim' is true (bool); AutoencoderKLWan takes an int there"),
])
def test_a_model_folder_with_wrong_classes_or_config_types_is_named(untrained_wan, tmp_path, capsys, edit, message):
    """Before: diffusers' own `Cannot load because decoder.conv_in.weight expected shape ...` or `TypeError: not
    all arguments converted during string formatting`, after the weights began to load."""
    folder = _broken_folder(untrained_wan, tmp_path, edit)
    assert main(["sample", "--teacher", str(folder), "--prompt", "a red circle", "--out",
                 str(tmp_path / "clip.mp4")]) == 2
    line = _error(capsys)
    assert line.startswith("distill sample: error: ") and message in line and str(folder) in line
    assert not (tmp_path / "clip.mp4").exists()


# --- plan ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gpus,memory,message", [
    ("100000000", "1e12", "--gpus 100000000: give 1 to 262144"),
    ("0", "80", "--gpus 0: give 1 to 262144"),
    ("8", "1e12", "--gpu-memory 1e+12: give one GPU's memory in GiB, above 0 and at most 1024"),
    ("8", "nan", "--gpu-memory nan:"),
    ("8", "inf", "--gpu-memory inf:"),
    ("8", "-80", "--gpu-memory -80:"),
    ("4096", "80", ("data.batch_size=8 per rank x 4096 data-parallel replicas = 32768 examples per step, but "
                    "data.size=2048 (toy world)")),
])
def test_plan_refuses_sizes_that_do_not_exist(capsys, gpus, memory, message):
    assert main(["plan", str(CONFIG), "--gpus", gpus, "--gpu-memory", memory]) == 2  # before: "fits", exit 0
    line = _error(capsys)
    assert line.startswith("distill plan: error: ") and message in line


def test_plan_still_plans_real_sizes(capsys):
    assert main(["plan", str(CONFIG), "--gpus", "8", "--gpu-memory", "80"]) == 0
    assert "fits" in capsys.readouterr().out


# --- training data ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["data.size=4", "data.batch_size=8"], ("data.batch_size=8 examples per step, but data.size=4 (toy world): "
                                            "every step would repeat examples")),
    (["data.source={prompts}", "data.latents=teacher", "data.batch_size=3"],
     "data.batch_size=3 examples per step, but data.source '{prompts}' holds 2"),
])
def test_a_batch_larger_than_the_dataset_is_refused_before_any_work(tmp_path, monkeypatch, capsys, overrides,
                                                                    message):
    import distill.train

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na blue square moving up\n")
    def started(*args, **kwargs):
        raise AssertionError("the run got past its checks")
    monkeypatch.setattr(distill.train, "setup_distributed", started)
    out = tmp_path / "run"
    args = [o.format(prompts=prompts) for o in overrides]
    assert main(["train", str(CONFIG), f"out={out}", *args]) == 2
    line = _error(capsys)
    assert line.startswith("distill train: error: ") and message.format(prompts=prompts) in line
    assert not (out / "cache").exists() and not (out / "checkpoints").exists()


def test_the_data_check_counts_replicas_and_the_trainer_checks_what_preflight_cannot_count():
    from distill.data import check_batch_fits
    from distill.train_config import DataConfig

    check_batch_fits(DataConfig(size=8, batch_size=2), 8, 4)  # exactly one epoch per step is fine
    with pytest.raises(ConfigError, match=r"data.batch_size=2 per rank x 5 data-parallel replicas = 10 examples"):
        check_batch_fits(DataConfig(size=8, batch_size=2), 8, 5)


# --- eval input -------------------------------------------------------------------------------------------------
def test_eval_cli_refuses_bad_input_in_one_line_before_sampling(tmp_path, capsys):
    """Three faults through the CLI's own path: a non-UTF-8 prompts file, `@0`, and a suite too small for its set
    metrics. Exit 2, one line, nothing written."""
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"a red circle\n" + "a caf\u00e9 scene\n".encode("latin-1"))
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: latin1\nprompts_file: prompts.txt\n")
    small = tmp_path / "small.yaml"
    small.write_text("name: small\nprompts: [a red circle moving left, a blue square moving up]\n")
    cases = [(["--suite", suite], f"{str(bad)!r} is not UTF-8 text: byte 0xe9 at offset 18 (line 2)"),
             (["--suite", small, "--model", f"x={tmp_path}@0"], "steps must be at least 1, got 0"),
             (["--suite", small], "suite 'small' has 2 prompt(s) x 1 seed(s)")]
    for args, message in cases:
        code = main(["eval", *map(str, args), "--out", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("distill eval: error: "), lines
        assert message in lines[0]
        assert not list(tmp_path.glob("out/cache/*.npy"))


def test_a_model_folder_that_is_missing_or_not_a_model_names_its_model(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: ok\nprompts: [a red circle, a blue square, a green triangle]\n")
    (tmp_path / "empty").mkdir()
    for folder, cause in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "no model_index.json")):
        code = main(["eval", "--suite", str(suite), "--model", f"s={folder}@4", "--out", str(tmp_path / "out")])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("distill eval: error: --model s: "), lines
        assert cause in lines[0] and str(folder.name) in lines[0]
    assert not (tmp_path / "out").exists()


# --- text that is not UTF-8 ---------------------------------------------------------------------------------------
def test_non_utf8_files_are_named(tmp_path, capsys):
    from distill.data import load_prompts

    latin = tmp_path / "prompts.txt"
    latin.write_bytes("a red circle\nun caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"data.source: {str(latin)!r} is not UTF-8 text: byte 0xe9 at offset "
                                          rf"19 \(line 2\); save it as UTF-8"):
        load_prompts(str(latin))
    utf16 = tmp_path / "prompts16.txt"
    utf16.write_bytes("a red circle\n".encode("utf-16"))
    assert main(["sample", "--prompts-file", str(utf16), "--out", str(tmp_path / "c.mp4")]) == 2
    line = _error(capsys)
    assert f"--prompts-file {str(utf16)!r} is not UTF-8 text (it looks like UTF-16)" in line
    config = tmp_path / "run.yaml"
    config.write_bytes(CONFIG.read_bytes() + "# caf\u00e9\n".encode("latin-1"))
    assert main(["plan", str(config), "--gpus", "1", "--gpu-memory", "80"]) == 2
    assert f"config file {str(config)!r} is not UTF-8 text" in _error(capsys)


# --- more config faults (scripts/try_more_faults.py) ----------------------------------------------------------------
def test_config_files_that_are_folders_or_bad_yaml_are_one_line_naming_where(tmp_path, capsys):
    """Before: a folder was 'does not exist'; a YAML syntax error printed PyYAML's 6-line excerpt."""
    assert main(["plan", str(tmp_path), "--gpus", "1", "--gpu-memory", "80"]) == 2
    assert f"config file {str(tmp_path)!r} is a folder; give a YAML file" in _error(capsys)
    broken = tmp_path / "broken.yaml"
    broken.write_text("teacher: tiny-wan\nrecipe: {name: consistency\ntrain: {steps: 3}\n")
    assert main(["plan", str(broken), "--gpus", "1", "--gpu-memory", "80"]) == 2
    line = _error(capsys)
    assert line.startswith(f"distill plan: error: {broken}: not valid YAML: line 3, column 6: ")
    assert "flow mapping" in line


def test_an_unknown_recipe_given_as_an_override_is_named_like_one_in_the_file(capsys):
    """Before: `recipe.name=nope` on the command line gave pydantic's tagged-union message with the whole section."""
    assert main(["plan", str(CONFIG), "recipe.name=nope", "--gpus", "1", "--gpu-memory", "80"]) == 2
    line = _error(capsys)
    assert line.startswith("distill plan: error: command-line override: key 'recipe.name': unknown recipe 'nope'; "
                           "one of")
    assert "'consistency'" in line and "{" not in line


def test_an_override_sets_a_key_in_a_section_left_null():
    """A saved run config has `lora: null` for a full student; `student.lora.rank=4` on it set nothing before but
    'cannot set ...: lora is a NoneType'. Now the section is made (and a resume then names the changed keys)."""
    from distill.core.config import validate
    from distill.train_config import TrainConfig

    data = yaml.safe_load(CONFIG.read_text())
    data["student"]["lora"] = None
    cfg = validate(TrainConfig, data, "run.yaml", ["student.lora.rank=4"])
    assert cfg.student.lora is not None and cfg.student.lora.rank == 4


def test_a_hub_id_without_a_network_says_offline_in_one_line(monkeypatch):
    """Before: huggingface_hub's LocalEntryNotFoundError, several lines, naming neither the teacher nor the cause."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from distill.teachers.resolve import TeacherNotFound, resolve_folder

    def no_network(repo_id, local_files_only=False, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nAn error happened "
                                      "while trying to locate the files on the Hub ...")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(TeacherNotFound) as err:
        resolve_folder("acme/video-model")
    message = str(err.value)
    assert "\n" not in message and "'acme/video-model'" in message
    assert "the hub cannot be reached (ConnectError: [Errno -2] Name or service not known); this machine looks " \
           "offline" in message


def test_a_key_given_twice_in_a_yaml_file_is_refused_naming_both_lines(tmp_path, capsys):
    """Before: PyYAML kept the last `teacher:` without a word (a block pasted at the end overrode the one above)."""
    twice = tmp_path / "twice.yaml"
    lines = CONFIG.read_text().splitlines()
    twice.write_text("\n".join(lines + ["teacher: tiny-wan-a14b"]) + "\n")
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("teacher:"))
    assert main(["plan", str(twice), "--gpus", "1", "--gpu-memory", "80"]) == 2
    assert f"not valid YAML: line {len(lines) + 1}, column 1: key 'teacher' is given twice (lines {first} and " \
           f"{len(lines) + 1}); keep one" in _error(capsys)


def test_the_staging_folder_of_a_killed_export_is_removed_by_the_next_export(tmp_path):
    """Before: `kill -9` during an export left `.tmp-OUT-PID` (a partial export) beside --out for good; the next
    export used its own pid and never looked. Now it removes this host's dead ones, saying so, and keeps a live
    export's."""
    import os
    import socket
    import subprocess
    import warnings

    from distill.export import _staged

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "exp"
    host = socket.gethostname()
    killed = tmp_path / f".tmp-exp-{host}-{dead.pid}"
    live = tmp_path / f".tmp-exp-{host}-{os.getppid()}"  # a running process: another export still writing
    for folder in (killed, live):
        (folder / "transformer").mkdir(parents=True)
        (folder / "transformer" / "part.safetensors").write_bytes(b"x" * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _staged(out, needed=1) as tmp:
            (tmp / "model_index.json").write_text("{}")
    assert not killed.exists() and live.is_dir() and (out / "model_index.json").is_file()
    assert [str(w.message) for w in caught] == [f"removed {str(killed)!r}, the partial output of an export (pid "
                                                f"{dead.pid}) that was killed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["exp", live.name])
