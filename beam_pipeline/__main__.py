"""``python -m beam_pipeline``: run the pipeline (see ``--help``)."""

import sys

from beam_pipeline import logs

logs.setup(log_format=logs.format_from_argv(sys.argv[1:]))

from beam_pipeline.cli import main  # noqa: E402  (logging first: Beam logs at import time)

sys.exit(main())
