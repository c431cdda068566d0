# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   create .venv, install, run the pipeline on the bundled sample
#   make test   create .venv, install with the test, dask and report extras, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test test-portable install bench clean model prism

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dask,report]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m beam_pipeline --runner DirectRunner

test: install
	$(PY) -m pytest -q

# Beam's Prism runner built with Go at the version of the installed apache-beam (--runner PrismRunner).
prism: install
	scripts/build_prism.sh $(PY)

# The suite again, with every batch pipeline on the PortableRunner (Fn API over gRPC).
test-portable: install
	$(PY) -m pytest -q --portable

bench: install
	$(PY) benchmarks/replay_throughput.py
	$(PY) benchmarks/window_throughput.py
	$(PY) benchmarks/live_latency.py
	$(PY) benchmarks/products_fetch.py
	$(PY) benchmarks/deliver_throughput.py
	$(PY) benchmarks/runner_comparison.py
	$(PY) benchmarks/queue_throughput.py
	$(PY) benchmarks/analytics.py

clean:
	rm -rf $(VENV) output build *.egg-info .pytest_cache

# The bundled scoring model: features of the bundled samples (no scores), then the fit.
model: install
	rm -rf build/model
	$(PY) -m beam_pipeline --trades beam_pipeline/data/trades_sample.csv --model none --output_dir build/model --progress off
	$(PY) -m beam_pipeline.devtools.train_model --features build/model/features.jsonl --output beam_pipeline/data/models/market_anomaly.json --version 1
