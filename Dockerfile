# make image    (builds gpt-oss-nemo:latest; then: docker run --gpus all --ipc=host -it gpt-oss-nemo make test)
# The project on an NGC NeMo image. BASE_IMAGE has no default here: `make image` passes the one named in
# compat/versions.py (NGC_BASE_IMAGE), the only place that names it. No NGC release carries the verified
# nemo_toolkit 2.7.3 + megatron-core 0.15.3, so scripts/setup_env.py brings those (and transformers) to their
# pins over the base, holds the image's CUDA torch and Transformer Engine, and fails the build when the
# version gate (compat/versions.py) refuses the result.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

WORKDIR /workspace/gpt-oss
# Requirements first, so a code change does not reinstall packages; compat/ holds the version gate.
COPY requirements.txt requirements-dev.txt pyproject.toml README.rst ./
COPY scripts/ scripts/
COPY compat/ compat/
RUN python3 -c "import nemo.collections.llm" \
    && mkdir -p convert data_prep recipes launch \
    && python3 scripts/setup_env.py
COPY . .
# Launched jobs find the project here (launch/executors.py: CONTAINER_ROOT) and write under ./work.
ENV PYTHONPATH=/workspace/gpt-oss \
    GPT_OSS_WORK=/workspace/gpt-oss/work \
    NEMORUN_HOME=/workspace/gpt-oss/work/nemo_run
