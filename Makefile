# The two set-up commands of the README. Each creates .venv if needed and installs the project.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fedquad demo

# One torch thread per process: the tests start several processes at once (Flower SuperNodes) and
# use tiny models, where a second thread spin-waiting on a busy core costs far more than it gains.
test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m ''

# A SuperLink and three SuperNodes on loopback, each with its own CSV and worker, run three Flower rounds and
# print each node's time split per round (docs/deployment.md; --json: a JSON summary).
.PHONY: deploy-smoke
deploy-smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/deploy_smoke.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
