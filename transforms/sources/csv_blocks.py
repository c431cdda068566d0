"""Quote CSV files as blocks of rows: header mapping, line blocks and field splitting.

A file is read in blocks of complete lines (about ``block_bytes`` each). A block without quote
characters or stray carriage returns is split by Arrow's CSV parser into string columns, one
row per non-blank line; any other block is split line by line with the ``csv`` module. Either
way one physical line is one record (a quoted field cannot span lines), blank lines are not
records, and a line that cannot be split comes back as a rejected row with its reason.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from transforms.quotes.rules import Rejected

#: Canonical column names, in the order the block schema holds them.
FIELDS = ("timestamp", "symbol", "bid_price", "bid_size", "ask_price", "ask_size", "latency_ms", "tenant")
REQUIRED = ("timestamp", "bid_price", "ask_price")
ALIASES = {"bid": "bid_price", "ask": "ask_price", "latency": "latency_ms"}

#: Columns of a split block: the physical line number, the line as read, and the raw fields.
SPLIT_SCHEMA = pa.schema(
    [pa.field("line", pa.int64()), pa.field("raw", pa.string())]
    + [pa.field(name, pa.string()) for name in FIELDS]
)


class HeaderError(ValueError):
    """A file's header row cannot be mapped to the quote columns."""


@dataclass(frozen=True)
class CsvLayout:
    """Where each canonical field sits in a file's rows.

    Attributes:
        width: number of columns in the header (every row must have as many).
        positions: canonical field name -> column index, for the fields the file has.
        ignored: header names that are not quote fields.
    """

    width: int
    positions: dict[str, int] = field(hash=False)
    ignored: tuple[str, ...] = ()

    def has(self, name: str) -> bool:
        return name in self.positions


def map_header(
    line: str,
    source: str,
    *,
    fields: Sequence[str] = FIELDS,
    required: Sequence[str] = REQUIRED,
    aliases: Mapping[str, str] = ALIASES,
    error: type[ValueError] = HeaderError,
    what: str = "header",
) -> CsvLayout:
    """Map a header line to a :class:`CsvLayout` of ``fields`` (names case-insensitive, ``aliases``
    accepted); a missing ``required`` field, a name given twice or an empty line raise ``error``."""
    text = line.lstrip("\ufeff").rstrip("\r\n")
    if not text.strip():
        raise error(f"{source}: the first line must be a {what} naming the columns, got an empty line")
    names = [name.strip().lower() for name in next(csv.reader([text]))]
    positions: dict[str, int] = {}
    ignored = []
    for index, name in enumerate(names):
        canonical = aliases.get(name, name)
        if canonical not in fields:
            ignored.append(name)
            continue
        if canonical in positions:
            raise error(f"{source}: {what} names {canonical!r} twice (aliases: {dict(aliases)})")
        positions[canonical] = index
    missing = [name for name in required if name not in positions]
    if missing:
        wanted = ", ".join(
            name + "".join(f" (or {a!r})" for a, c in aliases.items() if c == name) for name in missing
        )
        raise error(f"{source}: {what} lacks {wanted}; it has {', '.join(names)}")
    return CsvLayout(len(names), positions, tuple(ignored))


def parse_header(line: str, source: str) -> CsvLayout:
    """Map a quote file's header line (``bid``/``ask``/``latency`` accepted as aliases) to a :class:`CsvLayout`."""
    return map_header(line, source)


def read_header(
    stream: BinaryIO, source: str, parse: Callable[[str, str], CsvLayout] = parse_header,
    error: type[ValueError] = HeaderError,
) -> CsvLayout:
    """Read and parse (with ``parse``) the first line of an open file."""
    first = stream.readline()
    try:
        return parse(first.decode("utf-8"), source)
    except UnicodeDecodeError as exc:
        raise error(f"{source}: header is not valid UTF-8 ({exc})") from None


def line_blocks(stream: BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """Yield runs of complete lines of about ``block_bytes``; every run ends with ``\\n``."""
    carry = b""
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # one line longer than a block: keep reading
            carry = data
            continue
        carry = data[cut:]
        yield data[:cut]
    if carry:
        yield carry + b"\n"


@dataclass
class SplitBlock:
    """The result of splitting a block: well-formed rows, rejected lines, blank line count."""

    rows: pa.RecordBatch
    rejected_lines: list[int]
    rejected_raw: list[str]
    rejected_reasons: list[str]
    blank_lines: int


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == 10)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    return starts, ends


def _is_fast(data: bytes) -> bool:
    if b'"' in data or data.count(b"\r") != data.count(b"\r\n"):
        return False
    if data.startswith(b"\xef\xbb\xbf"):  # Arrow would drop a BOM that opens the block
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class SplitLines:
    """Complete lines split into string columns: the rows that split, and the lines that cannot.

    Attributes:
        line: int64, the physical line of each row.
        raw: each row's line as read (without its line break).
        fields: canonical name -> string column, for the fields the layout has.
        rejected_lines, rejected_raw, rejected_reasons: the lines that cannot be split, and why.
        blank_lines: how many blank lines there were (not records).
    """

    line: np.ndarray
    raw: pa.Array
    fields: dict[str, pa.Array]
    rejected_lines: list[int]
    rejected_raw: list[str]
    rejected_reasons: list[str]
    blank_lines: int


def split_lines(data: bytes, first_line: int, layout: CsvLayout) -> SplitLines:
    """Split complete lines (the last ending with ``\\n``) by ``layout``: Arrow's CSV parser for a
    block it can split exactly, the ``csv`` module line by line otherwise. ``first_line`` is the
    physical line number of the block's first line (the header is line 1)."""
    starts, ends = _line_bounds(data)
    if _is_fast(data):
        split = _split_with_arrow(data, starts, ends, first_line, layout)
        if split is not None:
            return split
    return _split_with_csv_module(data, starts, ends, first_line, layout)


def split_block(data: bytes, first_line: int, layout: CsvLayout, default_symbol: str) -> SplitBlock:
    """Split a block of quote lines into string columns (see :data:`SPLIT_SCHEMA`).

    Args:
        data: complete lines, the last ending with ``\\n``.
        first_line: the physical line number of the block's first line (the header is line 1).
        layout: the file's header mapping.
        default_symbol: the symbol of every row when the file has no symbol column.
    """
    return quote_block(split_lines(data, first_line, layout), layout, default_symbol)


def quote_block(split: SplitLines, layout: CsvLayout, default_symbol: str) -> SplitBlock:
    """Split quote lines as a :class:`SplitBlock` (:data:`SPLIT_SCHEMA` rows, the default symbol
    filled in when the file has no symbol column)."""
    columns = {"line": pa.array(split.line, type=pa.int64()), "raw": split.raw, **split.fields}
    block = SplitBlock(_rows(columns, len(split.line)), split.rejected_lines, split.rejected_raw,
                       split.rejected_reasons, split.blank_lines)
    return _with_defaults(block, layout, default_symbol)


def _split_with_arrow(
    data: bytes, starts: np.ndarray, ends: np.ndarray, first_line: int, layout: CsvLayout
) -> SplitLines | None:
    lengths = ends - starts
    blank = lengths == 0
    if (lengths == 1).any():
        blank |= (lengths == 1) & (np.frombuffer(data, dtype=np.uint8)[np.minimum(starts, len(data) - 1)] == 13)
    records = np.flatnonzero(~blank)
    if not len(records):
        return None  # Arrow refuses a CSV without rows; the line splitter has nothing to do
    invalid: list[tuple[int, str]] = []

    def on_invalid(row: pa_csv.InvalidRow) -> str:
        invalid.append((row.number, row.actual_columns))
        return "skip"

    names = [f"c{i}" for i in range(layout.width)]
    wanted = [names[i] for i in layout.positions.values()]
    table = pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in wanted},
            include_columns=wanted,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if table.num_rows + len(invalid) != len(records) or any(number is None for number, _ in invalid):
        return None  # rows and lines do not line up: let the line-by-line splitter decide
    offsets = np.empty(len(ends) + 1, dtype=np.int32)
    offsets[:-1] = starts
    offsets[-1] = ends[-1] + 1 if len(ends) else 0
    raw = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    kept = records
    rejected_lines, rejected_raw, reasons = [], [], []
    if invalid:
        bad = records[[number - 1 for number, _ in invalid]]
        kept = np.setdiff1d(records, bad, assume_unique=True)
        for index, (_, got) in zip(bad.tolist(), invalid):
            rejected_lines.append(first_line + index)
            rejected_raw.append(raw[index].as_py())
            reasons.append(Rejected("wrong_field_count", _field_count_detail(layout.width, got)).reason)
    if len(kept) != len(ends):
        raw = raw.take(pa.array(kept))
    fields = {name: table.column(names[index]).combine_chunks() for name, index in layout.positions.items()}
    return SplitLines(kept.astype(np.int64) + first_line, raw, fields, rejected_lines, rejected_raw, reasons,
                      int(blank.sum()))


class RejectedLine(Rejected):
    """A physical line that cannot be a record; ``raw`` is its text for the dead letter."""

    def __init__(self, code: str, detail: str, raw: str):
        super().__init__(code, detail)
        self.raw = raw


def split_line(chunk: bytes, width: int) -> tuple[str, list[str]] | None:
    """The text and fields of one physical line (without its line break); None if it is blank.

    Raises :class:`RejectedLine` for a line that is not UTF-8, not valid CSV (quotes must close
    on the same line) or has another number of fields than the header's ``width``.
    """
    chunk = chunk.rstrip(b"\r")
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
        raise RejectedLine("bad_encoding", detail, chunk.decode("utf-8", errors="replace")) from None
    if not text:
        return None
    try:
        row = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise RejectedLine("bad_csv", str(exc), text) from None
    if len(row) != width:
        raise RejectedLine("wrong_field_count", _field_count_detail(width, len(row)), text)
    return text, row


def _split_with_csv_module(
    data: bytes, starts: np.ndarray, ends: np.ndarray, first_line: int, layout: CsvLayout
) -> SplitLines:
    lines: list[int] = []
    raws: list[str] = []
    fields: list[list[str]] = []
    rejected_lines, rejected_raw, reasons = [], [], []
    blank = 0
    for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        try:
            split = split_line(data[start:end], layout.width)
        except RejectedLine as rejected:
            rejected_lines.append(first_line + index)
            rejected_raw.append(rejected.raw)
            reasons.append(rejected.reason)
            continue
        if split is None:
            blank += 1
            continue
        lines.append(first_line + index)
        raws.append(split[0])
        fields.append(split[1])
    columns = {name: pa.array([row[index] for row in fields], type=pa.string())
               for name, index in layout.positions.items()}
    return SplitLines(np.array(lines, dtype=np.int64), pa.array(raws, type=pa.string()), columns,
                      rejected_lines, rejected_raw, reasons, blank)


def _field_count_detail(expected: int, got: int) -> str:
    return f"expected {expected} fields as in the header, got {got}"


def _rows(columns: dict[str, pa.Array], num_rows: int) -> pa.RecordBatch:
    arrays = [columns.get(f.name, pa.nulls(num_rows, pa.string())) for f in SPLIT_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=SPLIT_SCHEMA)


def _with_defaults(split: SplitBlock, layout: CsvLayout, default_symbol: str) -> SplitBlock:
    if layout.has("symbol") or split.rows.num_rows == 0:
        return split
    symbols = pa.array([default_symbol], type=pa.string()).take(pa.array(np.zeros(split.rows.num_rows, dtype=np.int64)))
    split.rows = split.rows.set_column(SPLIT_SCHEMA.get_field_index("symbol"), "symbol", symbols)
    return split
