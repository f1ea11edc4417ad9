# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the bench extra (Quix Streams, py-spy) on top: `make bench`, and `make test` whose bench smoke test runs them
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint format typecheck unit integration bench tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Debian's prometheus package (a real server and promtool) for the observability tests; best effort:
# those tests skip with a clear reason when it cannot be installed.
tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "tools: could not install Debian's prometheus package; its tests will skip"; \
	  else echo "tools: not root or no apt-get; Prometheus tests will skip"; fi; }
	@# the package's service may have been started by the install; the tests start their own servers
	@-pkill -x prometheus >/dev/null 2>&1 || true

demo: $(STAMP)
	$(BIN)/stream-app demo

lint: $(STAMP)
	$(BIN)/ruff check stream_app tests bench
	$(BIN)/mypy stream_app

format: $(STAMP)
	$(BIN)/ruff format stream_app tests bench
	$(BIN)/ruff check --fix stream_app tests bench

test: $(BENCH_STAMP) tools lint
	$(BIN)/pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

# Every target of issue 9 in one run (about 25 minutes, 10 of them the realtime soak): bench/README.md.
# The scoring core is compiled with mypyc as the production image compiles it (stream_app.tools.compile), into
# build/compiled, which goes first on the bench's and its workers' PYTHONPATH; the checkout itself stays sources.
bench: $(BENCH_STAMP)
	rm -rf build/compiled
	$(BIN)/python -m stream_app.tools.compile build/compiled
	PYTHONPATH=$(CURDIR)/build/compiled $(BIN)/stream-app bench --profile --passes 3 --output bench/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
