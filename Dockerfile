# CUDA runtime image with the locked ovis environment (torch 2.13.0 / torchvision 0.28.0 wheels
# bring their own CUDA libraries; the base image provides the driver-facing runtime).
# Cannot be built on the CI machine (no Docker engine there).
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates make git \
    && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
WORKDIR /ovis
COPY pyproject.toml uv.lock README.md ./
RUN uv python install 3.11 && uv sync --frozen --no-install-project --python 3.11
COPY . .
RUN uv sync --frozen --python 3.11 && touch .venv/.synced
ENV PATH=/ovis/.venv/bin:$PATH
CMD ["ovis", "--help"]
