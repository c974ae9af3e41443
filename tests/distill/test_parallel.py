"""Sequence parallelism (`parallel.sequence`) on two CPU ranks (gloo): a Wan DiT's forward and its gradients match
the one-rank ones, a consistency run with N = 2 gives the N = 1 run's losses and resumes exactly, and a layout the
job or the networks cannot take is refused before any work."""

import json

import pytest
import yaml
from safetensors.torch import load_file

from distill.core.config import ConfigError
from distill.train_config import fingerprint, load_train_config
from tests.distill.test_train import APT, DMD2, RCM, losses, torchrun, train_cmd, write_config

WORKER = __import__("pathlib").Path(__file__).with_name("parallel_worker.py")


def test_dit_forward_and_gradients_over_two_ranks_equal_one_rank(tmp_path):
    out = tmp_path / "dit.json"
    proc = torchrun(WORKER, "dit", out, timeout=600)  # minutes only on a busy machine
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in json.loads(out.read_text()):
        for case in ("plain", "checkpointing", "per_token_timestep"):
            r = rank[case]
            assert r["block_tokens"] == r["tokens"] // 2, r  # each rank's blocks saw half of the clip
            assert r["output"] <= 1e-5, (case, r)
            # fp32 sums in another order: within 1e-5 of the gradients' own scale (about 30 here)
            assert r["grad"] <= 1e-5 * r["grad_scale"], (case, r)
            assert r["n_grads"] == 69  # every weight of the 2-layer DiT got a gradient
        j = rank["jvp"]  # rCM's JVP through the sequence-sharded DiT equals the one-rank JVP
        assert j["block_tokens"] == 24 and j["output"] <= 1e-5, j
        assert 0 < j["tangent_scale"] and j["tangent"] <= 1e-5 * j["tangent_scale"], j
        d = rank["discriminator"]
        assert d["output"] <= 1e-5 and d["grad"] <= 1e-5, d
        assert "does not divide the DiT's 3 attention heads" in rank["refused_heads"]
        assert "27 tokens does not split evenly over parallel.sequence=2" in rank["refused_tokens"]


# --- refused before any work ------------------------------------------------------------------------------------
def preflight_with(tmp_path, monkeypatch, world: int, sequence: int, teacher: str = "tiny-wan"):
    from distill.preflight import preflight

    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = load_train_config(write_config(tmp_path, teacher=teacher, parallel={"sequence": sequence}))
    return preflight(cfg)


def test_a_degree_that_does_not_divide_the_world_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"parallel.sequence=2 does not divide the job's 3 ranks.*\[1, 3\]"):
        preflight_with(tmp_path, monkeypatch, world=3, sequence=2)


def test_a_degree_that_does_not_divide_the_heads_is_refused(tmp_path, monkeypatch):
    # the tiny teacher has 4 heads
    with pytest.raises(ConfigError, match=r"teacher.*parallel.sequence=3 does not divide the DiT's 4 attention "
                                          r"heads.*\[1, 2, 4\]"):
        preflight_with(tmp_path, monkeypatch, world=3, sequence=3)


def test_a_clip_whose_tokens_do_not_split_is_refused(tmp_path, monkeypatch):
    teacher = tmp_path / "odd-clip.yaml"  # 1 x 24 x 40 pixels -> latent 1 x 6 x 10 -> 2x2 patches: 15 tokens
    teacher.write_text(yaml.safe_dump({"name": "odd-clip", "source": "builtin:tiny-wan",
                                       "video": {"frames": 1, "height": 24, "width": 40, "fps": 8},
                                       "max_sequence_length": 16}))
    with pytest.raises(ConfigError, match=r"clip 1x24x40.*15 tokens does not split evenly over parallel.sequence=2"):
        preflight_with(tmp_path, monkeypatch, world=2, sequence=2, teacher=str(teacher))


def test_sequence_degree_is_in_the_fingerprint_but_its_default_keeps_old_ones(tmp_path):
    cfg = load_train_config(write_config(tmp_path))
    assert "parallel.sequence" not in fingerprint(cfg)  # checkpoints written before the key existed still resume
    two = load_train_config(write_config(tmp_path), ["parallel.sequence=2"])
    assert fingerprint(two)["parallel.sequence"] == 2


# --- training ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)  # three launches; minutes each on a busy 2-core machine
def test_consistency_run_with_two_sequence_ranks_matches_one_rank_and_resumes(tmp_path):
    steps = {"steps": 10, "checkpoint_every": 5, "keep_checkpoints": 2}
    one = write_config(tmp_path, "one", train=steps)
    two = write_config(tmp_path, "two", train=steps, parallel={"sequence": 2})
    proc = torchrun(*train_cmd(one), nproc=1, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun(*train_cmd(two), nproc=2, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference, split = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(split) == list(range(1, 11))
    for step in range(1, 11):
        assert split[step] == pytest.approx(reference[step], abs=1e-4), (step, split[step], reference[step])
    weights = [load_file(tmp_path / run / "checkpoints" / "step-000010" / "student" /
                         "diffusion_pytorch_model.safetensors") for run in ("one", "two")]
    drift = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    assert drift < 1e-4, drift  # ten AdamW steps of lr 3e-4 from the same gradients (measured: about 1e-6)

    # Resume the N = 2 run from its step-5 checkpoint into another folder: steps 6..10 come out the same.
    resumed = write_config(tmp_path, "resumed", train=steps, parallel={"sequence": 2})
    proc = torchrun(*train_cmd(resumed, "--resume", tmp_path / "two" / "checkpoints" / "step-000005"), nproc=2,
                    timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = losses(tmp_path / "resumed")
    assert sorted(again) == list(range(6, 11))
    for step in range(6, 11):
        assert again[step] == pytest.approx(split[step], rel=1e-6, abs=1e-9), step
    print(json.dumps({"one": reference, "two": split, "resumed": again, "weight_drift": drift}))


def logged(run) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


# Every figure a recipe logs from its networks' forwards: the loss, and the second network's own.
FIGURES = {"consistency": ("loss",), "apt": ("loss", "discriminator", "d_real", "d_fake"),
           "dmd2": ("loss", "critic", "dmd_grad_rms"), "rcm": ("loss", "scm_g_norm")}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("stage,recipe", [("zero3", "consistency"), ("zero2", "apt"), ("zero2", "dmd2"),
                                          ("zero2", "rcm")])
def test_every_recipe_with_two_sequence_ranks_matches_one_rank(tmp_path, stage, recipe):
    """The teacher, student, EMA target and the recipe's own network (APT's discriminator with its pooled heads,
    DMD2's critic, rCM's JVP) all split their tokens over the group; ZeRO-3 partitions them as well."""
    sections = {"apt": {**APT, "recipe": {**APT["recipe"], "alarms": {"every": 100}}}, "dmd2": DMD2,
                "rcm": RCM}.get(recipe, {})
    steps = {"steps": 4, "checkpoint_every": 4}
    one = write_config(tmp_path, "one", deepspeed=stage, train=steps, **sections)
    two = write_config(tmp_path, "two", deepspeed=stage, train=steps, parallel={"sequence": 2}, **sections)
    for config, nproc in ((one, 1), (two, 2)):
        proc = torchrun(*train_cmd(config), nproc=nproc, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    reference, split = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert sorted(split) == sorted(reference) == [1, 2, 3, 4]
    for step in range(1, 5):
        for key in FIGURES[recipe]:
            assert split[step][key] == pytest.approx(reference[step][key], rel=1e-4, abs=1e-4), (step, key)
    print(json.dumps({key: [(reference[s][key], split[s][key]) for s in range(1, 5)] for key in FIGURES[recipe]}))
