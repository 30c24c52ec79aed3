# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project with every extra into it.
# constraints.txt pins the versions the project was tested with: it keeps pip's resolver from
# backtracking (boto3 × aiobotocore) and makes a fresh install repeatable.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ffr-installed
RUNS   ?= runs

.PHONY: demo test test-fast compare-demo venv clean-venv image image-base image-test push

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# The Kubeflow comparison pipeline (none / USB / ASB / FFR) run locally by the KFP local runner on
# the whole built-in demo benchmark (bias rate 0.95): tiny_cnn, 20 epochs a stage (no step floor,
# no early stopping: the Results were made without the budget), step 1 at lr 1e-3 (the grids'),
# the rest ffr's defaults, chosen from the grids' validation results (step 2 as LP-FT, USB at lr
# 3e-4 and weight decay 1e-3, ASB at 1e-3: docs/sweep.md, Defaults from evidence). The demo's promotion gate has a floor of 0.4 worst-group accuracy (the default is 0.5,
# which its one-seed FFR, 0.512, clears by 0.012 only): the model is registered and becomes @champion, so
# the run ends with a model to serve. About 4 minutes on 2 cores; prints the group metrics table
# and the command that serves the champion. Everything lands in runs/<pipeline>-<time>/.
DEMO_PARAMS = --param train_backbone=tiny_cnn --param train_baseline_epochs=20 --param train_pretrain_epochs=20 \
  --param train_finetune_epochs=20 --param train_pretrain_lr=1e-3 \
  --param train_min_steps=0 --param train_patience=0 --param gate_floor=0.4
demo: $(STAMP)
	$(VENV)/bin/ffr run comparison --runs-dir $(RUNS) $(DEMO_PARAMS)

# The same comparison without Kubeflow, as a resumable grid (configs/demo.yaml).
compare-demo: $(STAMP)
	$(VENV)/bin/ffr compare --out $(RUNS)/compare-demo --config configs/demo.yaml --workers 2

# Everything: unit, slow end-to-end and integration (real servers) tests. CI runs this.
test: $(STAMP)
	$(PY) -m pytest -q

# The unit tier only (no test marked slow or integration): the quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not integration"

clean-venv:
	rm -rf $(VENV)

# ---------------------------------------------------------------------------------- the image
# `make image` builds the component image with podman (ENGINE=docker works too), tagged
# <version>-<git revision> (python3 -m ffr.revision: what `ffr compile` names), from BASE_IMAGE
# (default: the Dockerfile's, the public slim Python image pinned by digest). The build gets this machine's own pip indexes
# (docker/pip_sources.py: its PIP_* settings, local ones mounted read-only).
ENGINE      ?= podman
ENGINE_OPTS ?= $(if $(filter podman,$(ENGINE)),--isolation=chroot)
IMAGE_REPO  ?= ghcr.io/ffr-project/ffr
IMAGE_TAG   := $(shell $(PYTHON) -m ffr.revision tag)
IMAGE       ?= $(IMAGE_REPO):$(IMAGE_TAG)
BASE_IMAGE  ?=
TORCH_INDEX ?=
PIP_SOURCES ?= $(shell $(PYTHON) docker/pip_sources.py)
image:
	$(ENGINE) build $(ENGINE_OPTS) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) --build-arg TORCH_INDEX=$(TORCH_INDEX) \
	  --build-arg VERSION=$$($(PYTHON) -m ffr.revision version) --build-arg GIT_COMMIT=$$($(PYTHON) -m ffr.revision commit) \
	  $(PIP_SOURCES) -t $(IMAGE) .
	@echo "built $(IMAGE)"

# A Debian base image made offline from Debian's packages (no registry needed): Python 3 with
# venv and CA certificates. About a minute; skipped when the image exists.
DEBIAN_BASE ?= localhost/ffr-debian-base:bookworm
image-base:
	$(ENGINE) image exists $(DEBIAN_BASE) || { \
	  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm - | \
	  $(ENGINE) import - $(DEBIAN_BASE); }

# Build the image on the Debian base, then run every component from its file system (podman
# image mount + chroot, as the image's user) through a whole pipeline on tiny settings
# (tests/image/). Needs root, podman and mmdebstrap (apt-get install podman mmdebstrap).
TEST_IMAGE ?= localhost/ffr:$(IMAGE_TAG)
image-test: $(STAMP) image-base
	$(MAKE) image BASE_IMAGE=$(DEBIAN_BASE) IMAGE=$(TEST_IMAGE)
	FFR_TEST_IMAGE=$(TEST_IMAGE) FFR_TEST_BASE_IMAGE=$(DEBIAN_BASE) $(PY) -m pytest -q -p no:cacheprovider tests/image

# Push the image to REGISTRY (e.g. make push REGISTRY=registry.example.com/team): as
# $(REGISTRY)/ffr:<tag>; the digest is recorded in build/pushed-images.json, and
# `ffr compile --image $(REGISTRY)/ffr` then pins the pipeline to it.
REGISTRY ?=
push:
	@test -n "$(REGISTRY)" || { echo "make push: set REGISTRY, e.g. make push REGISTRY=registry.example.com/team"; exit 2; }
	$(ENGINE) tag $(IMAGE) $(REGISTRY)/ffr:$(IMAGE_TAG)
	mkdir -p build
	$(ENGINE) push $(PUSH_OPTS) --digestfile build/.digest $(REGISTRY)/ffr:$(IMAGE_TAG)
	$(PYTHON) -m ffr.revision record-push $(REGISTRY)/ffr:$(IMAGE_TAG) build/.digest
