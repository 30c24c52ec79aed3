# The image every Kubeflow component of ffr runs in: the ffr package with its dependencies and
# kfp (the component executor) baked in; no model weights (they are never downloaded at build
# time: pretrained weights and diffusion models come from a mounted volume at run time).
#
# Variants by build argument (see docs/kubeflow.md):
#   CPU:  docker build -t ghcr.io/ffr-project/ffr:0.1.0 .
#   CUDA: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                      -t ghcr.io/ffr-project/ffr:0.1.0-cuda .
# BASE must provide Python >= 3.10 with pip; the CUDA torch wheels carry the CUDA runtime, so
# the slim Python base serves both variants (the node provides the driver).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG UID=1000
# The git revision the image is built from (`make image` passes it): runs and registered models
# record it as ffr.git_commit where no checkout exists.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.revision="${GIT_COMMIT}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FFR_GIT_COMMIT=${GIT_COMMIT} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/ffr \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/models/torch \
    HF_HOME=/models/huggingface

WORKDIR /opt/ffr
COPY pyproject.toml README.md ./
COPY ffr ./ffr
COPY components ./components
COPY pipelines ./pipelines

# One install of the project with the extras a cluster run needs (kfp for the component executor,
# diffusers for Stable Diffusion synthesis, s3fs for s3:// paths, mlflow and dvc for tracking, the
# registry and data revisions): the dependency set is pyproject's (no second list to drift). torch
# and torchvision resolve from TORCH_INDEX (CPU or CUDA wheels; their local version label, e.g.
# +cpu, ranks above PyPI's build of the same release), everything else from PyPI. The versions
# are bounded by pyproject.toml, hence no pins here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" ".[kubeflow,diffusion,s3,tracking]" \
    && python -c "import ffr, kfp, torch, mlflow, dvc; print('ffr', ffr.__version__, 'kfp', kfp.__version__, 'torch', torch.__version__)"

# A non-root user. KFP's launcher stages artifacts under /gcs, /minio and /s3 inside the
# container, so those folders exist and belong to the user; /models is where weights are mounted.
RUN useradd --create-home --uid "${UID}" ffr \
    && mkdir -p /gcs /minio /s3 /models \
    && chown "${UID}" /gcs /minio /s3 /models
USER ${UID}
WORKDIR /home/ffr

CMD ["ffr", "--help"]
