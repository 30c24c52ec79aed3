# The image every Kubeflow component of ffr runs in: the ffr package with its dependencies and
# kfp (the component executor) baked in; no model weights (they are never downloaded at build
# time: pretrained weights and diffusion models come from a mounted volume at run time).
#
# Build it with `make image` (podman or docker; docs/kubeflow.md). Build arguments:
#   BASE_IMAGE   any image with Python >= 3.11 (tomllib) and its venv module. Default: the public
#                slim Python image pinned by digest, its tag beside it (python:3.11-slim, resolved
#                as 3.11.16-slim; the digest is the multi-platform index, so amd64 and arm64 nodes
#                both get their own build of that one release). A rebuild months later gets the
#                same base; move the pin deliberately (docs/kubeflow.md, "Build"). `make image-test`
#                builds a Debian one from Debian's packages.
#   TORCH_INDEX  an extra wheel index for torch/torchvision: empty (default) takes PyPI's build,
#                which carries the CUDA runtime and runs on CPU and GPU nodes alike;
#                https://download.pytorch.org/whl/cpu gives a CPU-only image a third the size
#   VERSION, GIT_COMMIT, SOURCE  OCI labels (`make image` passes the package version and revision)
#   UID          the non-root user the components run as (1000)
# pip reads PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and PIP_CERT from build arguments
# of the same name: a mirror, a local wheel index, a CA bundle (`make image` passes the build
# machine's own; build arguments are not kept in the image).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=""
ARG UID=1000
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT

# The virtual environment comes first on PATH: `python3` in the component command (what a
# Kubeflow pod runs) is the image's, with ffr and kfp installed.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/home/ffr \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/models/torch \
    HF_HOME=/models/huggingface

# A non-root user. KFP's launcher stages artifacts under /gcs, /minio and /s3 inside the
# container, so those folders exist and belong to the user; /models is where weights are mounted.
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && mkdir -p /home/ffr /gcs /minio /s3 /models \
    && if command -v useradd >/dev/null; then useradd --no-create-home --home-dir /home/ffr --uid "${UID}" ffr; \
       else echo "ffr:x:${UID}:${UID}:ffr:/home/ffr:/bin/sh" >> /etc/passwd && echo "ffr:x:${UID}:" >> /etc/group; fi \
    && chown "${UID}:${UID}" /home/ffr /gcs /minio /s3 /models

# The dependencies first, from pyproject.toml and constraints.txt only: a code edit reuses this
# layer (torch is most of the image). docker/requirements.py lists pyproject's dependencies with
# the extras a cluster run needs (kfp for the component executor, diffusers for Stable Diffusion,
# s3fs for s3:// paths, mlflow and dvc for tracking, the registry and data revisions);
# constraints.txt pins every version to the ones the project is tested with.
WORKDIR /opt/ffr
COPY pyproject.toml constraints.txt docker/requirements.py ./
RUN python3 requirements.py pyproject.toml kubeflow,diffusion,s3,tracking > /tmp/requirements.txt \
    && pip install -c constraints.txt ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
        -r /tmp/requirements.txt setuptools \
    && rm /tmp/requirements.txt

# Then the code: installed without touching the dependencies (and without build isolation, so
# nothing is fetched), then checked by importing what the components import.
COPY README.md ./
COPY ffr ./ffr
RUN pip install --no-deps --no-build-isolation . \
    && python3 -c "import ffr, ffr.integrations.kubeflow.components, ffr.integrations.kubeflow.pipelines, kfp, torch, torchvision, mlflow, dvc, s3fs, diffusers; print('ffr', ffr.__version__, 'kfp', kfp.__version__, 'torch', torch.__version__)" \
    && rm -rf /opt/ffr/build /opt/ffr/*.egg-info

# Declared last: every RUN after an ARG sees it, so a new revision declared earlier would
# reinstall the dependencies. Runs and registered models record it as ffr.git_commit where no
# checkout exists. buildah reuses cached LABEL/ENV steps whose ARG changed unless a RUN follows
# the ARGs (containers/buildah#5501): this cheap one also records the revision in the image.
ARG VERSION=0.0.0
ARG GIT_COMMIT=unknown
ARG SOURCE=https://github.com/ffr-project/ffr
ARG BASE_IMAGE
RUN printf '%s %s\n' "${VERSION}" "${GIT_COMMIT}" > /opt/ffr/REVISION
LABEL org.opencontainers.image.title="ffr" \
      org.opencontainers.image.description="From Fake to Real: Kubeflow components that pretrain on balanced synthetic images and fine-tune on real ones" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV FFR_GIT_COMMIT=${GIT_COMMIT}
USER ${UID}
WORKDIR /home/ffr

CMD ["ffr", "--help"]
