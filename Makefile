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

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m ''

# A SuperLink and three SuperNodes on loopback run three Flower rounds (docs/deployment.md).
.PHONY: deploy-smoke
deploy-smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/deploy_smoke.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
