# gpt-oss fine-tuning recipes with NeMo 2. `make help` lists the targets.
# Python: the project's .venv when `make setup` made one, else the python3 on PATH (an NGC NeMo container).
PY = $$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)
# Written by scripts/setup_env.py once the environment passed the version gate (in a container too). Every
# target that runs the project depends on it: a missing environment is built first, and one older than the
# files it is built from is brought up to date; `make setup` rebuilds it unconditionally.
ENV = .venv/.stamp
ARGS ?=
WORK = $${GPT_OSS_WORK:-work}
SOURCE ?= hr_ibm_attrition
INPUT ?= ../shared/data/hr/ibm_hr_attrition.csv
ROWS ?= 1000000
BASE ?= $(WORK)/models/gpt-oss-tiny-hf
# The NGC base image and the project's image, as compat/versions.py names them (read without importing it).
NGC_BASE_IMAGE = $$(sed -n 's/^NGC_BASE_IMAGE = "\(.*\)"/\1/p' compat/versions.py)
PROJECT_IMAGE = $$(sed -n 's/^PROJECT_IMAGE = "\(.*\)"/\1/p' compat/versions.py)

.PHONY: help setup image test lint finetune plan launch predict export-peft data data-real baselines bench-data bench-fast bench-finetune clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## build the environment from requirements*.txt (inside a NeMo container: the pinned stack over it), then the version gate
	python3 scripts/setup_env.py --stamp $(ENV)

$(ENV): requirements.txt requirements-dev.txt pyproject.toml scripts/setup_env.py
	python3 scripts/setup_env.py --stamp $(ENV)

image:  ## the project's container image on the NGC base named in compat/versions.py (docker build)
	docker build --build-arg BASE_IMAGE=$(NGC_BASE_IMAGE) -t $(PROJECT_IMAGE) .

test: $(ENV)  ## the test suite (GPU tests skip without CUDA)
	$(PY) -m pytest -q

lint: $(ENV)  ## ruff lint and format check
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

finetune: $(ENV)  ## tiny gpt-oss end to end: build, import, fine-tune (full SFT, 300 steps), export (ARGS="peft=lora ...")
	$(PY) -m recipes.finetune $(ARGS)

plan: $(ENV)  ## memory plan; refuses what cannot fit and names the nearest plan (ARGS="experiment=spark_pair_120b_lora_fp8")
	$(PY) -m recipes.plan $(ARGS)

launch: $(ENV)  ## validate, plan, build, then launch on the configured cluster (ARGS="experiment=spark_20b_lora --dry-run")
	$(PY) -m launch $(ARGS)

# The built-in task trains both stages (profile -> answer; then the history -> personalised answer), so both are
# predicted, and the evaluation sets them side by side (ARGS="stages=[1]" predicts stage 1 only).
predict: $(ENV)  ## predictions of the latest exported run on the built-in test split (stages 1 and 2), then their evaluation
	@run=$$(ls -td $(WORK)/runs/*/*/hf 2>/dev/null | head -1); \
	test -n "$$run" || { echo "no exported model under $(WORK)/runs: run make finetune first"; exit 1; }; \
	dir=$$(dirname $$run); \
	$(PY) -m recipes.predict model_dir=$$run input=$(WORK)/data/builtin/test.jsonl out=$$dir/predictions.jsonl max_new_tokens=8 $(ARGS) && \
	$(PY) -m recipes.evaluate predictions=$$dir/predictions.jsonl references=$(WORK)/data/builtin/test.jsonl out_dir=$$dir/eval

export-peft: $(ENV)  ## the latest LoRA run's attention adapters as a Hugging Face PEFT adapter, <run>/hf_peft (BASE=<hf folder>)
	@ckpt=$$(ls -td $(WORK)/runs/*-lora/*/checkpoints/*-last 2>/dev/null | head -1); \
	test -n "$$ckpt" || { echo "no LoRA checkpoint under $(WORK)/runs: run make finetune ARGS=peft=lora first"; exit 1; }; \
	$(PY) -m convert.export_peft --lora "$$ckpt" --out "$$(dirname "$$(dirname "$$ckpt")")/hf_peft" --base $(BASE) --overwrite $(ARGS)

data: $(ENV)  ## chat JSONL from one source (SOURCE=hr_generic INPUT=path ARGS="answer_format=json overwrite=true"; salt: $$DATA_PREP_SALT)
	$(PY) -m data_prep data_prep=$(SOURCE) input=$(INPUT) $(ARGS)

data-real: $(ENV)  ## the shipped real sources in ../shared/data -> work/data/<source>/ (replaced; salt: $$DATA_PREP_SALT, else random)
	$(PY) -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv overwrite=true $(ARGS)
	$(PY) -m data_prep data_prep=hr_hrdataset_v14 input=../shared/data/hr/HRDataset_v14.csv overwrite=true $(ARGS)
	$(PY) -m data_prep data_prep=tickets input=../shared/data/tickets overwrite=true $(ARGS)

baselines: $(ENV)  ## classical baselines on prepared data, scored by the evaluator (DATA=work/data/<name>)
	$(PY) -m recipes.baselines data_dir=$(DATA) out_dir=$(WORK)/baselines/$$(basename $(DATA)) $(ARGS)

bench-data: $(ENV)  ## data-prep throughput and peak RSS (ROWS=200000 for a quick check)
	$(PY) bench/bench_data_prep.py --rows $(ROWS)

bench-fast: $(ENV)  ## each hand-written fast path of data_prep against its library alternative (ROWS=200000 for a quick check)
	$(PY) bench/bench_fast_paths.py --rows $(ROWS)

bench-finetune: $(ENV)  ## wall time of make finetune + make predict and the score, cold and warm (ARGS="--seeds 1 2")
	$(PY) bench/bench_finetune.py $(ARGS)

clean:  ## remove everything runs wrote under work/
	rm -rf work
