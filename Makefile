# gpt-oss fine-tuning recipes with NeMo 2. `make help` lists the targets.
# Python: the project's .venv when `make setup` made one, else the python3 on PATH (an NGC NeMo container).
PY = $$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)
ARGS ?=

.PHONY: help setup test test-all lint finetune clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## build the environment from requirements*.txt (only what is missing inside a NeMo container)
	python3 scripts/setup_env.py

test:  ## the test suite (GPU tests skip without CUDA)
	$(PY) -m pytest -q

lint:  ## ruff lint and format check
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

finetune:  ## tiny gpt-oss end to end: build, import, LoRA fine-tune, merge, export (ARGS="peft=none ...")
	$(PY) -m recipes.finetune $(ARGS)

clean:  ## remove everything runs wrote under work/
	rm -rf work
