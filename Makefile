# Set-up and main jobs of SCORE. `make help` lists them.
PYTHON ?= .venv/bin/python
DEMO_ROOT ?= output/demo
DEMO_SEMANTIC_ROOT ?= output/demo_semantic

.PHONY: help install test test-fast lint format demo demo-semantic gpu-check clean

help:
	@echo "make install    virtual environment .venv with torch, detectron2, SCORE (scripts/install.sh)"
	@echo "make test       the whole test suite, slow end-to-end tests included (what CI runs)"
	@echo "make test-fast  the test suite without tests marked slow"
	@echo "make lint       ruff check + format check"
	@echo "make demo       synthetic data -> train the tiny-world SCORE on CPU -> cross-dataset table, overlays"
	@echo "make demo-semantic  the same for land cover: synthetic LandDiscover50K -> mIoU table, class maps"
	@echo "make gpu-check  the prepared GPU check (GPU_CHECK_ARGS=--cpu: tiny model on CPU)"

install:
	bash scripts/install.sh

test:
	$(PYTHON) -m pytest tests

test-fast:
	$(PYTHON) -m pytest tests -m "not slow"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

demo:
	bash scripts/demo.sh $(DEMO_ROOT)

demo-semantic:
	bash scripts/demo_semantic.sh $(DEMO_SEMANTIC_ROOT)

gpu-check:
	bash tools/bench/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf output .pytest_cache .ruff_cache
