# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow calibrate teacher teacher-gpu teacher-a14b teacher-ti2v venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The main job on the built-in teacher (22 minutes from an empty runs/demo on two CPU cores, measured): distil a 4-step consistency student and
# a 1-step APT student (2 ranks under DeepSpeed), score them with the teacher and its naive few-step baselines on
# the held-out suite, print the scorecard. Run it again to reuse finished stages or continue an interrupted one.
demo: $(STAMP)
	$(BIN)/distill demo --out runs/demo

# The quality gate's calibration (docs/eval.md, "Gate calibration"), after `make demo`: the demo's consistency student
# against a second training of it (train.seed=1, made here first: 4.5 minutes), 20 tuning and 60 measurement trials
# of the held-out suite, 5-9 minutes each on two CPU cores. A block of at most MINUTES, then the report of the
# trials in (interim until all 80 are): run it again to continue where it stopped. Every trial's eval is also kept
# gzipped in docs/gate-calibration/ (about 0.1 MB each): commit it after a block, and a machine with an empty runs/
# continues from it once make demo has retrained the same students (the records' checkpoint hashes decide).
MINUTES ?= 120
NULL_RUN := runs/demo-seed1/consistency
calibrate: $(STAMP) $(NULL_RUN)/export/model_index.json
	$(BIN)/python scripts/calibrate_gate.py --student runs/demo/consistency/export@4 \
		--null-student $(NULL_RUN)/export@4 --tune 20 --trials 60 --cache runs/calibrate/cache --out runs/calibrate \
		--keep docs/gate-calibration --minutes $(MINUTES)

$(NULL_RUN)/export/model_index.json: runs/demo/consistency/export/model_index.json
	$(BIN)/torchrun --nproc_per_node 2 -m distill.cli train configs/recipes/consistency-tiny.yaml train.steps=300 \
		train.checkpoint_every=100 train.validate_every=300 train.seed=1 out=$(NULL_RUN) \
		data.cache_dir=runs/demo/data-cache
	$(BIN)/distill export $(NULL_RUN) --out $(NULL_RUN)/export

runs/demo/consistency/export/model_index.json:
	@echo "make calibrate needs the demo's consistency student: run make demo first" >&2; exit 2

# Re-make the built-in teacher (teachers/builtin/tiny-wan) from scratch on two CPU cores (about 80 minutes): its VAE
# by the shipped VAE's recipe, its DiT at the CPU length (8,000 steps of batch 16), which is the retired teacher's quality; see
# docs/tiny-teacher.md.
teacher: $(STAMP)
	$(BIN)/python scripts/train_tiny_teacher.py --out teachers/builtin/tiny-wan

# Re-train the shipped teacher's DiT as it was made, on a GPU (5.2 minutes on one H200), keeping its VAE.
teacher-gpu: $(STAMP)
	$(BIN)/python scripts/train_tiny_teacher.py --device cuda --reuse-vae teachers/builtin/tiny-wan \
		--dit-batch 64 --dit-steps 9500 --out teachers/builtin/tiny-wan --work runs/tiny-teacher-gpu-work

# Re-make the built-in two-expert teacher (teachers/builtin/tiny-wan-a14b) from tiny-wan: each expert fine-tuned on
# its noise range (about 10 minutes on two CPU cores); see docs/teachers.md.
teacher-a14b: $(STAMP)
	$(BIN)/python scripts/make_two_expert_teacher.py --out teachers/builtin/tiny-wan-a14b

# Re-make the built-in image-conditioned teacher (teachers/builtin/tiny-wan-ti2v, Wan 2.2 TI2V's layout) from
# tiny-wan: 1,200 steps of the TI2V objective (29.5 minutes on two shared CPU cores); see docs/tiny-teacher-i2v.md.
teacher-ti2v: $(STAMP)
	$(BIN)/python scripts/train_tiny_i2v_teacher.py --out teachers/builtin/tiny-wan-ti2v

clean:
	rm -rf $(VENV) runs .pytest_cache
