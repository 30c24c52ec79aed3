# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project with every extra into it.
# constraints.txt pins the versions the project was tested with: it keeps pip's resolver from
# backtracking (boto3 × aiobotocore) and makes a fresh install repeatable.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ffr-installed
RUNS   ?= runs

.PHONY: demo test compare-demo venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

# The Kubeflow comparison pipeline (none / USB / ASB / FFR) run locally by the KFP local runner on
# the built-in demo benchmark at a size that runs in minutes (50 images a digit, 10 epochs a stage:
# it shows the pipeline, not the method: see README Results for the measured grid); prints the
# group metrics table. Everything lands in runs/<pipeline>-<time>/.
demo: $(STAMP)
	$(VENV)/bin/ffr run comparison --runs-dir $(RUNS) --param demo_per_digit=50 \
	  --param train_epochs=10 --param pretrain_epochs=10 --param finetune_epochs=10

# The same comparison without Kubeflow, as a resumable grid (configs/demo.yaml).
compare-demo: $(STAMP)
	$(VENV)/bin/ffr compare --out $(RUNS)/compare-demo --config configs/demo.yaml --workers 2

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
