# Two commands matter: `make serve` and `make test`. Everything else is what they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.tools
BUILD := build
FP32_MAR := $(BUILD)/efficientnet_lite0.mar
DEFAULT_MAR := model_store/efficientnet_lite0.mar
# all-MiniLM-L6-v2 as shipped (sentence_embedder) and fine-tuned on the SMS spam collection (transformer_classifier):
# built as ONNX in build/, then each optimized like the image model into model_store/
TEXT_NAMES := all_minilm_l6_v2 sms_spam_minilm
TEXT_FP32 := $(TEXT_NAMES:%=$(BUILD)/%.mar)
TEXT_MARS := $(TEXT_NAMES:%=model_store/%.mar)
ENTITIES := sms_entities_minilm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get install -y -q --no-install-recommends wrk prometheus >/dev/null
SOURCES := $(wildcard handlers/*.py export/*.py export/zoo/*.py) config/efficientnet_lite0.yaml

.PHONY: install tools archives entities samples serve stop status test unit clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

# the native tools the tests drive: wrk (tskit bench --generator wrk) and promtool (the alert rules), from Debian
$(TOOLS):
	@mkdir -p $(VENV)
	@command -v wrk >/dev/null && command -v promtool >/dev/null || $(APT_INSTALL) || \
		{ $(SUDO) apt-get update -q >/dev/null && $(APT_INSTALL); }
	touch $@

tools: $(TOOLS)

$(FP32_MAR): $(STAMP) $(SOURCES)
	$(BIN)/tskit build-default --format onnx --export-path $(BUILD)

$(BUILD)/calibration: $(STAMP)
	$(BIN)/tskit samples --out samples --calibration $@ >/dev/null

# the fastest engine and decoder on this machine that passes the accuracy guard (docs/performance.md)
$(DEFAULT_MAR): $(FP32_MAR) $(BUILD)/calibration
	$(BIN)/tskit optimize $(FP32_MAR) --calibration $(BUILD)/calibration --export-path model_store

$(TEXT_FP32) &: $(STAMP) $(SOURCES)
	$(BIN)/python -m export.zoo.minilm --export-path $(BUILD) --texts $(BUILD)/texts

$(TEXT_MARS): model_store/%.mar: $(BUILD)/%.mar
	$(BIN)/tskit optimize $< --calibration $(BUILD)/texts/calibration.txt --export-path model_store

archives: $(DEFAULT_MAR) $(TEXT_MARS)

# a token classifier (phone numbers, amounts, web addresses in SMS) fine-tuned from MiniLM, optimized like the
# others; not in `archives`: `make entities`, then serve it beside them (docs/handlers.md)
$(BUILD)/$(ENTITIES).mar: $(STAMP) $(SOURCES)
	$(BIN)/python -m export.zoo.sms_entities --export-path $(BUILD)

model_store/$(ENTITIES).mar: $(BUILD)/$(ENTITIES).mar $(TEXT_FP32)
	$(BIN)/tskit optimize $< --calibration $(BUILD)/texts/calibration.txt --export-path model_store

entities: model_store/$(ENTITIES).mar

samples: $(STAMP)
	@$(BIN)/tskit samples --out samples >/dev/null

serve: archives samples
	$(BIN)/tskit serve --config config.properties --sample samples/coffee.png

stop: $(STAMP)
	$(BIN)/tskit stop

status: $(STAMP)
	$(BIN)/tskit status

test: $(STAMP) $(TOOLS)
	$(BIN)/python -m pytest tests

# the fast loop: in-process tests that need no trained, optimized or served archive (docs/development.md)
unit: $(STAMP)
	$(BIN)/python -m pytest tests -m unit -q

clean:
	rm -rf model_store/*.mar $(BUILD) samples logs key_file.json .pytest_cache
