# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project with every extra into it.
# constraints.txt pins the versions the project was tested with: it keeps pip's resolver from
# backtracking (boto3 × aiobotocore) and makes a fresh install repeatable.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ffr-installed
RUNS   ?= runs

.PHONY: demo test test-fast compare-demo venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# The Kubeflow comparison pipeline (none / USB / ASB / FFR) run locally by the KFP local runner on
# the whole built-in demo benchmark (bias rate 0.95), with the recipe the README's Results chose
# by validation WGA: tiny_cnn, 20 epochs a stage, step 1 at lr 1e-3, step 2 as LP-FT (5 head-only
# epochs). About 4 minutes on 2 cores; prints the group metrics table. Everything lands in
# runs/<pipeline>-<time>/.
DEMO_PARAMS = --param backbone=tiny_cnn --param train_epochs=20 --param pretrain_epochs=20 \
  --param finetune_epochs=20 --param pretrain_lr=1e-3 --param 'finetune_options={lpft_epochs: 5}'
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
