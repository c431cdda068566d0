"""Settle queue consumers' output folders from the group's registry of committed parts.

    python -m beam_pipeline.queue_outputs --source redis://127.0.0.1:6379/quotes --group midprice \\
        output/consumer=b            # or output/: every consumer=<name> folder in it

A consumer writes each block of stream entries as a part and appends it to its readable files
only after the block is committed (:mod:`transforms.sinks.staging`). One killed with SIGKILL and not
restarted leaves at most one part behind: committed (then it is appended here) or not (then
another consumer wrote those entries, and it is deleted here). A consumer restarted under the
same name, or a recoverer that can reach the folder, does the same by itself; this command is
for a folder nobody else reaches, e.g. on the dead consumer's machine. A folder whose consumer
is alive (its heartbeat is fresh) is left alone.

Exit codes: 0 settled (or nothing to do); 1 a consumer is alive; 2 bad usage or Redis unreachable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from transforms.queue.streams import QueueAddress, QueueError, settle_folder

PREFIX = "consumer="


def consumer_folders(path: str) -> list[tuple[str, str]]:
    """``(consumer name, folder)`` for ``path`` itself (``consumer=<name>``) or its children."""
    base = os.path.basename(os.path.normpath(path))
    if base.startswith(PREFIX):
        return [(base[len(PREFIX):], path)]
    if not os.path.isdir(path):
        return []
    return sorted((name[len(PREFIX):], os.path.join(path, name)) for name in os.listdir(path)
                  if name.startswith(PREFIX) and os.path.isdir(os.path.join(path, name)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.queue_outputs", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="the stream: redis://HOST:PORT/STREAM")
    parser.add_argument("--group", default="midprice", help="the consumer group (default: midprice)")
    parser.add_argument("folders", nargs="+", help="consumer=<name> folders, or output dirs holding them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        address = QueueAddress.parse(args.source)
    except QueueError as error:
        parser.error(str(error))
    found = [pair for folder in args.folders for pair in consumer_folders(folder)]
    if not found:
        parser.error(f"no consumer=<name> folder in {', '.join(args.folders)}")
    import redis

    client = address.connect()
    alive = 0
    try:
        for name, folder in found:
            if client.exists(address.key("alive", args.group, name)):
                print(f"{folder}: consumer {name} is alive; it settles its own folder", file=sys.stderr)
                alive += 1
                continue
            done = settle_folder(client, address, args.group, name, folder)
            print(f"{folder}: {done.applied} committed parts applied ({done.applied_bytes} bytes), "
                  f"{done.dropped} uncommitted dropped")
    except redis.ConnectionError as error:
        print(f"queue_outputs: error: {address.url}: {error}", file=sys.stderr)
        return 2
    return 1 if alive else 0


if __name__ == "__main__":
    sys.exit(main())
