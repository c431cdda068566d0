# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   create .venv, install, run the pipeline on the bundled sample
#   make test   create .venv, install with the test and dask extras, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test test-portable install bench clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dask]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m beam_pipeline --runner DirectRunner

test: install
	$(PY) -m pytest -q

# The suite again, with every batch pipeline on the PortableRunner (Fn API over gRPC).
test-portable: install
	$(PY) -m pytest -q --portable

bench: install
	$(PY) benchmarks/replay_throughput.py
	$(PY) benchmarks/window_throughput.py
	$(PY) benchmarks/live_latency.py
	$(PY) benchmarks/products_fetch.py
	$(PY) benchmarks/deliver_throughput.py
	$(PY) benchmarks/runners.py
	$(PY) benchmarks/queue_throughput.py

clean:
	rm -rf $(VENV) output *.egg-info .pytest_cache
