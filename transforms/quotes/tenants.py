"""Tenants: whose quote a record is, and the output partition it is written to.

Quote v2 carries a ``tenant`` (:func:`transforms.quotes.rules.parse_tenant`: a safe directory name,
``"default"`` when absent). Windows are kept per ``(tenant, symbol)``. With
``--partition_by_tenant`` every per-record output (mid prices, latency errors, dead letters,
window panes, late quotes) is written to ``<output_dir>/tenant=<t>/<file>`` instead of
``<output_dir>/<file>``: the producing stage splits each block's lines by tenant into
:class:`~transforms.blocks.TextChunk` s that name their partition, and the sinks keep one file
per partition and name.

A dead letter whose tenant cannot be known (a line that does not split into fields, a frame that
is not JSON, a tenant that is not a valid name) goes to the :data:`UNATTRIBUTED` partition, never
to another tenant's files.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from transforms.arrays import numpy
from transforms.quotes import columns

#: The tenant of dead letters that cannot be attributed (not a valid tenant name: it starts with "_").
UNATTRIBUTED = "_unattributed"

T = TypeVar("T")


def partition_name(tenant: str) -> str:
    """The output sub-directory of a tenant, Hive style: ``tenant=<t>``."""
    return f"tenant={tenant}"


def partition_dir(root: str, partition: str) -> str:
    """Where a partition's files go: ``root/<partition>``, or ``root`` itself for the root partition ``""``."""
    return FileSystems.join(root, partition) if partition else root


def dead_letter_tenants(rows: pa.RecordBatch) -> pa.Array:
    """The tenant of each rejected raw row (:data:`transforms.sources.replay.BLOCK_SCHEMA` columns).

    A row whose fields could not be split (its ``timestamp``, a required column, is null, and so
    is its tenant) or whose tenant is not a valid name is :data:`UNATTRIBUTED`; a row without a
    tenant is the default tenant's, as it would have been had it been valid (the replay gives the
    broken lines of a file without a tenant column the default tenant).
    """
    tenants, rejects = columns.parse_tenants(rows.column("tenant"))
    known = pc.or_(rows.column("timestamp").is_valid(), rows.column("tenant").is_valid())
    known = numpy(known).copy()
    known[list(rejects)] = False
    return pc.if_else(pa.array(known, type=pa.bool_()), tenants, pa.scalar(UNATTRIBUTED, pa.string()))


def split_by_tenant(batch: pa.RecordBatch, partitioned: bool) -> Iterator[tuple[str, pa.RecordBatch]]:
    """``(partition, rows)`` per tenant of the batch's ``tenant`` column, in tenant order; rows keep
    their order. Not ``partitioned``: the whole batch, under the root partition ``""``."""
    if not partitioned:
        yield "", batch
        return
    tenants = batch.column("tenant")
    unique = pc.unique(tenants).to_pylist()
    if len(unique) == 1:
        yield partition_name(unique[0]), batch
        return
    values = numpy(tenants)
    for tenant in sorted(unique):
        yield partition_name(tenant), batch.filter(pa.array(values == tenant))


def group_by_partition(items: Iterable[T], tenant_of: Callable[[T], str], partitioned: bool) -> dict[str, list[T]]:
    """Items by output partition, in partition order, each list in the items' order (everything
    under the root partition ``""`` when not ``partitioned``)."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(partition_name(tenant_of(item)) if partitioned else "", []).append(item)
    return dict(sorted(groups.items()))
