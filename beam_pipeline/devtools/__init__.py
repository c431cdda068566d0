"""Development tools, not part of a run: mock HTTP APIs, the websocket quote feed, the sample
generator, the plain-Python reference and the model trainer.

Each is a command: ``python -m beam_pipeline.devtools.<tool> --help``.
"""
