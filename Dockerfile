# docker build -t gpt-oss-nemo . && docker run --gpus all --ipc=host -it gpt-oss-nemo make test
# The project on an NGC NeMo image. scripts/setup_env.py sees that NeMo is importable and installs only the
# pinned packages that are missing, into the image's Python, so the container's CUDA stack stays untouched.
# NEMO_TAG: an NGC release whose nemo_toolkit is 2.7.x (the last with nemo.collections.llm); check its notes.
ARG NEMO_TAG=25.11
FROM nvcr.io/nvidia/nemo:${NEMO_TAG}

WORKDIR /workspace/gpt-oss
# Requirements first, so a code change does not reinstall packages.
COPY requirements.txt requirements-dev.txt pyproject.toml README.rst ./
COPY scripts/ scripts/
RUN python3 -c "import nemo.collections.llm" \
    && mkdir -p convert data_prep recipes launch \
    && python3 scripts/setup_env.py
COPY . .
# Launched jobs find the project here (launch/executors.py: CONTAINER_ROOT) and write under ./work.
ENV PYTHONPATH=/workspace/gpt-oss \
    GPT_OSS_WORK=/workspace/gpt-oss/work \
    NEMORUN_HOME=/workspace/gpt-oss/work/nemo_run
