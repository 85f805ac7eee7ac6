# GPU image of the labeller: runs the CLI (python -m core) by default and the
# Streamlit app with --entrypoint streamlit. docs/distributed.md shows both.
#
# torch 2.14.1 from PyPI is built for CUDA 13.0 and brings its own CUDA
# libraries as wheels, and so does faiss-gpu (CUDA 12 runtime wheels). The
# base image adds the CUDA 13.0 compatibility settings and the variables
# that let the NVIDIA container toolkit expose the GPUs (docker run --gpus all).
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/tmp/numba-cache

# Ubuntu's Python; apt versions follow the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The install step of CI (pip install -r requirements.txt), then the GPU
# build of FAISS in place of the CPU one: both provide the faiss module.
COPY requirements.txt ./
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install -r requirements.txt \
    && pip uninstall -y faiss-cpu \
    && pip install faiss-gpu==1.15.1

COPY . .

# An unprivileged user; docs/distributed.md shows how to write files as your own user instead.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin labeler
USER 10001

# Streamlit's default port.
EXPOSE 8501

ENTRYPOINT ["python", "-m", "core"]
CMD ["--help"]
