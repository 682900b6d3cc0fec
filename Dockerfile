# Noisett MCP on a CUDA GPU: the package installed as a wheel, served over streamable HTTP on port 8000.
#
#   docker build -t noisett-mcp .            (or, without Docker: az acr build -r <registry> -t noisett-mcp:<tag> .)
#   docker run --gpus all -p 8000:8000 -v noisett-models:/models \
#     -e AZURE_AD_TENANT_ID=<tenant> -e AZURE_AD_CLIENT_ID=<client> noisett-mcp
#
# Weights are not in the image: the server downloads them into MODEL_CACHE_DIR (a mounted volume; an Azure
# Files share in Azure) on its first start. To bake them in instead (a bigger image, no download at start),
# with the Hugging Face token for the gated Llama-3.1 text encoder as a BuildKit secret, which is never
# written to a layer or to the image history:
#   docker build --secret id=hf_token,env=HF_TOKEN \
#     --build-arg BAKE_MODEL=HiDream-ai/HiDream-I1-Fast -t noisett-mcp .
#
# Why a plain Python base and not nvidia/cuda: PyPI's torch wheels bring their own CUDA libraries
# (nvidia-cublas, -cudnn, -cufft, -cusolver, -cusparse, -nccl, ... about 2.0 GB of wheels for torch 2.13)
# and load those, never the system's, so a cuDNN runtime base only added a second copy. The GPU driver
# comes from the host through the NVIDIA container runtime, which NVIDIA_VISIBLE_DEVICES and
# NVIDIA_DRIVER_CAPABILITIES below ask for. torch 2.13 from PyPI is built for CUDA 13.0: the host driver
# must be 580 or newer (for an older one, relock with TORCH_BACKEND=cu128 scripts/lock-image).
#
# Reproducible: the base is pinned by digest (Dependabot updates it), and every Python package, torch
# included, by version and hash in docker/requirements.txt (scripts/lock-image regenerates it).

ARG BASE_IMAGE=python:3.12-slim-trixie@sha256:57cd7c3a7a273101a6485ba99423ee568157882804b1124b4dd04266317710de

# ---- build: the locked dependencies and a wheel of the package, in a virtual environment ----
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/noisett
ENV PATH=/opt/noisett/bin:$PATH
WORKDIR /src
COPY docker/requirements.txt ./docker/requirements.txt
# Every package pinned and hashed; --no-deps: nothing outside the lock gets in.
RUN pip install --require-hashes --no-deps -r docker/requirements.txt
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# The wheel is built with the build backend pinned in pyproject.toml, in pip's isolated build environment
# (it does not stay in the image); then installed without dependencies, which the lock already gave.
RUN pip wheel --no-deps --wheel-dir /dist . \
    && pip install --no-deps /dist/noisett_mcp-*.whl \
    && pip check \
    && noisett-mcp --version

# ---- weights: empty unless BAKE_MODEL names a Hugging Face repository ----
FROM build AS weights
ARG BAKE_MODEL=""
ARG BAKE_LLAMA=meta-llama/Llama-3.1-8B-Instruct
# The token is a secret mount: it exists only while this RUN runs, in no layer and no build argument.
RUN --mount=type=secret,id=hf_token,required=false \
    mkdir -p /models \
    && if [ -n "${BAKE_MODEL}" ]; then \
      HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
      python -c "import sys; from huggingface_hub import snapshot_download as get; [get(repo, cache_dir='/models') for repo in sys.argv[1:]]" "${BAKE_MODEL}" "${BAKE_LLAMA}"; \
    fi

# ---- runtime: Python, the environment and a non-root user ----
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 10001 noisett \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin noisett \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/noisett /opt/noisett
COPY --from=weights --chown=10001:10001 /models /models
ENV PATH=/opt/noisett/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MODEL_CACHE_DIR=/models \
    NOISETT_DATA_DIR=/data \
    NOISETT_LOG_FORMAT=json \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
WORKDIR /home/noisett
EXPOSE 8000
# /healthz answers 200 while the model loads and once it is ready, and 503 once loading failed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["noisett-mcp", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]
