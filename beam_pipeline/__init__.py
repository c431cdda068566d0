"""beam_pipeline: an Apache Beam pipeline for market quotes (see README.md)."""

__version__ = "0.1.0"
