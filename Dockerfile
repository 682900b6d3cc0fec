# Noisett MCP on a CUDA GPU: the package installed as a wheel, served over streamable HTTP on port 8000.
#
#   docker build -t noisett-mcp .            (or, without Docker: az acr build -r <registry> -t noisett-mcp:<tag> .)
#   docker run --gpus all -p 8000:8000 -v noisett-models:/models \
#     -e AZURE_AD_TENANT_ID=<tenant> -e AZURE_AD_CLIENT_ID=<client> noisett-mcp
#
# Weights are not in the image: the server downloads them into MODEL_CACHE_DIR (a mounted volume; an Azure
# Files share in Azure) on its first start. To bake them in instead (a bigger image, no download at start):
#   docker build --build-arg BAKE_MODEL=HiDream-ai/HiDream-I1-Fast --build-arg HF_TOKEN -t noisett-mcp .
# HF_TOKEN (for the gated Llama-3.1 text encoder) is used in the `weights` stage only: it is not in the
# final image or its history.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- build: a wheel of the package, installed with CUDA torch into a virtual environment ----
FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_SPEC=torch
ARG EXTRAS=quantization,azure,azure-monitor
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/noisett
ENV PATH=/opt/noisett/bin:$PATH
# CUDA torch first, from PyTorch's index: the package's open range then keeps it.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && pip install build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Extras that a version does not define are skipped with a warning.
RUN python -m build --wheel --outdir /dist . \
    && pip install "$(ls /dist/noisett_mcp-*.whl)[${EXTRAS}]" \
    && pip uninstall -y build \
    && noisett-mcp --version

# ---- weights: empty unless BAKE_MODEL names a Hugging Face repository ----
FROM build AS weights
ARG BAKE_MODEL=""
ARG BAKE_LLAMA=meta-llama/Llama-3.1-8B-Instruct
# The token lives in this stage only; the runtime stage copies /models and nothing else from it.
# hadolint ignore=DL3064
ARG HF_TOKEN=""
RUN mkdir -p /models \
    && if [ -n "${BAKE_MODEL}" ]; then \
      python -c "import sys; from huggingface_hub import snapshot_download as get; [get(repo, cache_dir='/models') for repo in sys.argv[1:]]" "${BAKE_MODEL}" "${BAKE_LLAMA}"; \
    fi

# ---- runtime: the CUDA runtime, the environment and a non-root user ----
FROM ${CUDA_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 noisett \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin noisett \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/noisett /opt/noisett
COPY --from=weights --chown=10001:10001 /models /models
ENV PATH=/opt/noisett/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
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
