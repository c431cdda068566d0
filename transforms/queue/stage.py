"""The queue's Beam sink: ``WriteToQueue`` appends normalized quotes to a Redis stream.

It wraps :class:`transforms.queue.streams.Publisher` (backpressure, batching, the single-object
encoding) in a DoFn; the consumer side is :class:`transforms.queue.streams.QueueFeed`, read through
the same ``ReadFeed`` source as the live feed (:mod:`transforms.sources.stage`).
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from schemas import fingerprint, latest_version, load_schema
from schemas.single_object import SingleObjectEncoder, single_object_header
from transforms.accounting import RECORDS_CHECK, Accounting, Check
from transforms.queue.streams import (
    QUOTE_V3_FINGERPRINT,
    QUOTE_V3_PRICE_SCALE,
    Publisher,
    QueueAddress,
    fast_quote_messages,
    quote_messages,
)
from transforms.sinks.avro_output import quote_records
from transforms.tracing import TracedDoFn


class _PublishFn(TracedDoFn):
    """Valid quote blocks -> the stream; one counts dict per block (queued, waits, trims)."""

    STAGE = "queue_publish"

    def __init__(self, url: str, group: str, scale: int, settings: dict):
        self._url, self._group, self._scale, self._settings = url, group, scale, settings

    def setup(self):
        self._publisher = Publisher(QueueAddress.parse(self._url), self._group, **self._settings)
        schema = load_schema("quote", latest_version("quote"))
        self._encoder = SingleObjectEncoder(schema)
        self._fast = fingerprint(schema) == QUOTE_V3_FINGERPRINT and self._scale <= QUOTE_V3_PRICE_SCALE
        self._header = single_object_header(schema)

    def messages(self, batch: pa.RecordBatch) -> list[tuple[bytes, str]]:
        if self._fast:
            return fast_quote_messages(batch, self._scale, self._header)
        return quote_messages(quote_records(batch, self._scale), batch.column("mode").to_pylist(), self._encoder)

    def process(self, block):
        before = self._publisher.stats.as_dict()
        self._publisher.publish(self.messages(block.batch))
        after = self._publisher.stats.as_dict()
        yield {name: after[name] - before[name] for name in ("queued", "backpressure_waits", "trimmed_unread")}


class WriteToQueue(beam.PTransform):
    """Valid quote blocks (``NormalizeQuotes.valid``) published to ``url``'s stream, with
    ``group``'s backpressure (``settings``: :class:`Publisher`'s high_water, max_len, batch_size);
    outputs one counts dict per block (``queued``, ``backpressure_waits``, ``trimmed_unread``)."""

    #: A publisher's quotes are queued or dead letters (NormalizeQuotes'): records_in is their sum.
    ACCOUNTING = Accounting(
        checks=(Check(RECORDS_CHECK, ("queued",)),),
        counts=(("queued", "queued"),),
        notes=("  backpressure: waited {backpressure_waits:,} times for the group (high water {queue_high_water:,}); "
               "{trimmed_unread:,} unread entries trimmed",),
    )

    def __init__(self, url: str, group: str, *, scale: int, **settings):
        super().__init__()
        QueueAddress.parse(url)  # a bad url fails now, not on a worker
        self._fn = _PublishFn(url, group, scale, settings)

    def expand(self, valid):
        return valid | "Publish" >> beam.ParDo(self._fn)
