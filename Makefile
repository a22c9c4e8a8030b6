# Two commands matter: `make serve` and `make test`. Everything else is what they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEFAULT_MAR := model_store/efficientnet_lite0.mar
SOURCES := $(wildcard handlers/*.py export/*.py export/zoo/*.py) config/efficientnet_lite0.yaml

.PHONY: install archives samples serve stop status test clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

$(DEFAULT_MAR): $(STAMP) $(SOURCES)
	$(BIN)/tskit build-default --format onnx --export-path model_store

archives: $(DEFAULT_MAR)

samples: $(STAMP)
	@$(BIN)/tskit samples --out samples >/dev/null

serve: archives samples
	$(BIN)/tskit serve --config config.properties --sample samples/coffee.png

stop: $(STAMP)
	$(BIN)/tskit stop

status: $(STAMP)
	$(BIN)/tskit status

test: $(STAMP)
	$(BIN)/python -m pytest tests

clean:
	rm -rf model_store/*.mar samples logs key_file.json .pytest_cache
