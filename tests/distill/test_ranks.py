"""Every rank takes the same decisions and holds the same networks.

Unit checks run in two processes of a gloo group forked by `torch.multiprocessing` (a few seconds): figures
and votes reduced over ranks, APT's alarms given a rank-local anomaly, the EMA's broadcast from rank 0. The runs
under torchrun (tests/distill/ranks_worker.py) check that the built and trained networks agree on every rank:
one build in `make test`, the matrix of ZeRO stages x LoRA/full x recipes slow-only."""

import json
from pathlib import Path

import pytest
import torch

from tests.distill.ranks_group import in_group
from tests.distill.test_train import torchrun, write_config

WORKER = Path(__file__).with_name("ranks_worker.py")


# --- two forked processes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Forked, not spawned: the children start with the parent's imports (torch, diffusers under APT) instead of
    paying for them twice again (tens of seconds on two shared cores). Spawned where an earlier test left this
    process in a process group, which a forked child would inherit."""
    import distill.students.apt  # noqa: F401  imported once, here, for both children

    tmp = tmp_path_factory.mktemp("group")
    method = "spawn" if torch.distributed.is_initialized() else "fork"
    torch.multiprocessing.start_processes(in_group, args=(str(tmp),), nprocs=2, start_method=method)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_votes_and_figures_are_reduced_over_ranks(ranks):
    for r in ranks:
        assert r["any"] == [True, False, True]
        assert r["reason"] == "rank 1: step 3: the loss is nan"  # rank 0 had none, and stops with rank 1's
        assert r["same_reason"] == "step 4: the loss is inf"  # every rank's own: no rank named
        assert r["no_reason"] is None
        assert r["mean"] == {"a": 1.0, "b": 1.0}


def test_apt_alarms_decide_alike_on_every_rank_when_one_ranks_samples_go_bad(ranks):
    mild = [r["alarms_mild"] for r in ranks]
    assert mild[0] == mild[1] and mild[0]["fired"] == [False, False]
    strong = [r["alarms_strong"] for r in ranks]
    assert strong[0] == strong[1] and strong[0]["fired"] == [True, True]


def test_broadcast_from_first_gives_every_rank_rank_0s_named_weights(ranks):
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert w0["0.weight"] == w1["0.weight"] and w0["0.bias"] == w1["0.bias"]
    assert w0["1.weight"] != w1["1.weight"]  # a weight not named is left as each rank built it


# --- runs under torchrun -----------------------------------------------------------------------------------------
def run_cases(tmp: Path, cases: list[dict], timeout: int = 300) -> dict:
    (tmp / "cases.json").write_text(json.dumps(cases))
    proc = torchrun(WORKER, tmp / "cases.json", tmp / "report.json", timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "report.json").read_text())


def assert_ranks_agree(case: str, ranks: list[dict], networks: set[str]) -> None:
    """Every rank's digest of each network (the student, the recipe's `networks`, the EMA) is the same, after the
    build and, where the case trained, after its steps."""
    for when in ("built", "trained"):
        if when not in ranks[0]:
            continue
        held = [r[when] for r in ranks]
        assert set(held[0]) == networks | {"student", "ema"}, (case, when, sorted(held[0]))
        for name in held[0]:
            assert len({h[name] for h in held}) == 1, f"{case}: the ranks' {name} differ {when}"
    built = ranks[0]["built"]
    assert built["ema"] == built["student"], f"{case}: the EMA does not start as the student"


@pytest.mark.slow  # ~50-80 s: make test's budget; the unit checks above and the kill-and-resume runs stay in it
def test_two_ranks_build_the_same_lora_student_ema_and_discriminator(tmp_path):
    """ZeRO-2, a LoRA student with its EMA, APT's discriminator (random heads): the build only (~30 s). Before
    the build was seeded alike, each rank's EMA kept its own random adapter."""
    config = write_config(tmp_path, deepspeed="zero2", student={"lora": {"rank": 4, "alpha": 4}},
                          recipe={"name": "apt", "sampler": {"steps": 1}}, optim={"name": "rmsprop"})
    report = run_cases(tmp_path, [{"name": "zero2-lora-apt", "config": str(config)}])
    assert_ranks_agree("zero2-lora-apt", report["zero2-lora-apt"], {"discriminator"})


# Each stage x student (LoRA, full), each with one of the recipes, so that every stage builds and trains two of the
# three network shapes (consistency: student and EMA, its target; DMD2 with GAN heads: a critic with random heads,
# LoRA where the student is; APT: a discriminator with random heads) and each recipe runs under LoRA and full.
MATRIX = {("zero0", "lora"): "consistency", ("zero0", "full"): "dmd2", ("zero1", "lora"): "apt",
          ("zero1", "full"): "consistency", ("zero2", "lora"): "dmd2", ("zero2", "full"): "apt",
          ("zero3", "lora"): "consistency", ("zero3", "full"): "dmd2"}
RECIPES = {"consistency": ({"recipe": {"name": "consistency", "skip": 5, "target": "ema", "sampler": {"steps": 2}}},
                           set()),
           "dmd2": ({"recipe": {"name": "dmd2", "critic_steps": 1, "critic_lr": 1e-3, "gan_weight": 0.1,
                                "sampler": {"steps": 2}}}, {"critic"}),
           "apt": ({"recipe": {"name": "apt", "sampler": {"steps": 1}, "alarms": {"every": 1}},
                    "optim": {"name": "rmsprop", "lr": 1e-3}}, {"discriminator"})}


def zero1(tmp: Path) -> Path:
    """ZeRO-1 (optimizer states partitioned), which configs/deepspeed does not ship."""
    path = tmp / "zero1.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "gradient_clipping": "auto", "zero_optimization": {"stage": 1},
                                "bf16": {"enabled": False}, "steps_per_print": 1 << 30}))
    return path


@pytest.mark.slow  # ~5 min: ten two-rank runs in one torchrun job
def test_every_rank_holds_the_same_networks_after_build_and_steps_for_every_stage(tmp_path):
    cases = []
    for (stage, student), recipe in MATRIX.items():
        sections, _ = RECIPES[recipe]
        lora = {"lora": {"rank": 4, "alpha": 4}} if student == "lora" else {}
        if recipe == "dmd2" and student == "lora":
            sections = {**sections, "recipe": {**sections["recipe"], "critic_lora": {"rank": 4, "alpha": 4}}}
        name = f"{stage}-{student}-{recipe}"
        config = write_config(tmp_path, name, deepspeed=str(zero1(tmp_path)) if stage == "zero1" else stage,
                              student={**lora, "ema_decay": 0.5}, train={"steps": 2, "checkpoint_every": 2},
                              **{"optim": {"lr": 1e-3}, **sections})
        cases.append({"name": name, "config": str(config), "train": True})
    # a rank-local anomaly under ZeRO-3, where a checkpoint and a stop are collectives: one rank's monitor asks for a
    # checkpoint at step 1, one rank alone would stop at step 2
    config = write_config(tmp_path, "anomaly", deepspeed="zero3", train={"steps": 3, "checkpoint_every": 3,
                                                                          "collective_timeout_s": 30})
    cases.append({"name": "fire-on-rank-1", "config": str(config), "train": True, "fire_on": [1, 1],
                  "overrides": [f"out={tmp_path / 'fire'}"]})
    cases.append({"name": "stop-on-rank-1", "config": str(config), "train": True, "stop_on": [1, 2],
                  "overrides": [f"out={tmp_path / 'stop'}"]})
    report = run_cases(tmp_path, cases, timeout=900)

    for (stage, student), recipe in MATRIX.items():
        name = f"{stage}-{student}-{recipe}"
        ranks = report[name]
        assert all("trained" in r for r in ranks), (name, [r.get("aborted") for r in ranks])
        assert_ranks_agree(name, ranks, RECIPES[recipe][1])
        assert ranks[0]["built"]["ema"] != ranks[0]["trained"]["ema"], f"{name}: the EMA never moved"
        assert ranks[0]["built"]["student"] != ranks[0]["trained"]["student"], f"{name}: the student never moved"

    fired = report["fire-on-rank-1"]
    assert all("trained" in r for r in fired)  # no rank waited alone in a checkpoint's collectives
    assert fired[0]["checkpoints"] == ["step-000001", "step-000003"]
    stopped = report["stop-on-rank-1"]
    for r in stopped:  # both ranks stop at step 2 with rank 1's reason (no checkpoint is due before step 3)
        assert r["aborted"].startswith("rank 1: step 2: injected on rank 1; stopped."), r["aborted"]
    assert stopped[0]["checkpoints"] == []
