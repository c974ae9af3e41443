# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow teacher venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Until the distillation engine lands, the demo scores the teacher's naive few-step baselines (4 and 1 Euler
# steps) against the 50-step teacher on the held-out suite: the gap the students will have to close.
demo: $(STAMP)
	$(BIN)/distill eval --suite toyworld-held-out --teacher tiny-wan --model teacher@4 --model teacher@1 --out runs/demo

# Re-make the shipped built-in teacher (teachers/builtin/tiny-wan) from scratch; see docs/tiny-teacher.md.
teacher: $(STAMP)
	$(BIN)/python scripts/train_tiny_teacher.py --out teachers/builtin/tiny-wan

clean:
	rm -rf $(VENV) runs .pytest_cache
