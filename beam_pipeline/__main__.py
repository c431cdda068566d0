"""``python -m beam_pipeline``: run the pipeline (see ``--help``).

Start-up is part of every run's time, so this entry point imports what the run needs and no more
(:mod:`beam_pipeline.startup`): pandas only when something uses it, pyarrow on a leaner allocator,
and no module teardown at exit.
"""

import sys

from beam_pipeline import logs
from beam_pipeline.startup import defer_pandas, exit_now, lean_memory_pool

logs.setup(log_format=logs.format_from_argv(sys.argv[1:]))

with defer_pandas():  # pandas is imported when something uses it, not by Beam's import
    from beam_pipeline.cli import main  # noqa: E402  (logging first: Beam logs at import time)
lean_memory_pool()

exit_now(main())
