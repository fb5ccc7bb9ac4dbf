# fluxserve on an NVIDIA GPU. Build: docker build -t fluxserve .
# Run:   docker run --gpus all -p 8000:8000 -v fluxserve-models:/models -v fluxserve-data:/data \
#          fluxserve serve --model flux-schnell
# Weights are not in the image: they download into the /models volume on first start (or
# mount a Hugging Face cache there). Jobs, images and keys live in the /data volume.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The virtual environment sits outside the source, so code changes reuse the torch layer.
RUN python3 -m venv /opt/fluxserve
ENV PATH=/opt/fluxserve/bin:$PATH
# PyPI's torch wheels for Linux carry their own CUDA 12 libraries; the base image gives the
# driver interface. Installed first: the biggest layer changes least often.
RUN pip install "torch>=2.4"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The fp8 extra (torchao) serves --tier fp8 / cache; watermark and C2PA are optional.
RUN pip install ".[fp8,watermark]" && rm -rf /src

# Never run as root: the service owns only its two volumes.
RUN useradd --create-home --uid 10001 fluxserve \
    && mkdir -p /models /data \
    && chown fluxserve:fluxserve /models /data
USER fluxserve
ENV HF_HOME=/models \
    FLUXSERVE_DATA_DIR=/data \
    FLUXSERVE_HOST=0.0.0.0 \
    FLUXSERVE_ALLOWED_HOSTS=localhost,127.0.0.1
# Reached by another name? Add it: -e FLUXSERVE_ALLOWED_HOSTS=localhost,gpu1.example.com
# (or set FLUXSERVE_PUBLIC_URL). Other Host headers get 400; /healthz answers any.
VOLUME ["/models", "/data"]
EXPOSE 8000
WORKDIR /home/fluxserve
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
ENTRYPOINT ["fluxserve"]
CMD ["serve"]
