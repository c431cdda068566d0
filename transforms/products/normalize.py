"""Normalize products from the paginated APIs and summarise them (the products job's stages).

Each API shape (see :mod:`transforms.products.paginate`) names its fields its own way; :func:`normalize_item`
maps an item to the unified ``product`` record (``schemas/product.v1.avsc``)::

    {"id": "catalog:17", "title": "...", "source": "catalog", "price": Decimal("12.50"),
     "currency": "USD", "category": "books", "processed_at": <epoch µs the page was fetched>}

``id`` is ``<source>:<the API's id>``, unique across sources. An item that cannot be mapped, or
whose record the Avro schema refuses, becomes a dead letter with its reason (``not_an_object``,
``missing_id``, ``missing_title``, ``bad_price``, ``negative_price``, ``bad_category``,
``bad_currency``, ``schema``); a second item with an id already seen is a ``duplicate_id`` dead
letter. Every item received is a product or a dead letter: :func:`counts_balance` checks it.

:class:`ProductStats` computes the category distribution and price statistics (count, min, max,
mean, median) per source and per category; :class:`WriteSummary` writes ``summary.json``.
"""

from __future__ import annotations

import heapq
import json
import logging
import statistics
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from apache_beam.io.filesystems import FileSystems
from fastavro.validation import validate

from transforms.products.paginate import CURSOR, OFFSET, PAGES, Page, utc_iso

LOG = logging.getLogger(__name__)

PRODUCTS, DEAD_LETTERS = "products", "dead_letters"
PRICE_SCALE = 4
MAX_PRICE = Decimal(10) ** (18 - PRICE_SCALE)


class ProductError(ValueError):
    """An item that cannot become a product; ``str`` is the dead letter's reason."""


# --------------------------------------------------------------------------- items → records (pure)


def _text(value: Any, code: str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProductError(f"{code}: {what} is {_shown(value)}")
    text = str(value).strip()
    if not text:
        raise ProductError(f"{code}: {what} is empty")
    return text


_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", list: "array", type(None): "null"}


def _shown(value: Any) -> str:
    return "missing" if value is None else f"{json.dumps(value)[:60]} ({type(value).__name__})"


def parse_price(value: Any, what: str = "price", cents: bool = False) -> Decimal:
    """An exact, non-negative price with at most 4 decimals, from a JSON number or numeric string."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProductError(f"bad_price: {what} is {_shown(value)}")
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ProductError(f"bad_price: {what} {value!r} is not a number") from None
    if not price.is_finite():
        raise ProductError(f"bad_price: {what} {value!r} is not a number")
    if cents:
        if price != price.to_integral_value():
            raise ProductError(f"bad_price: {what} {value!r} is not a whole number of cents")
        price = price / 100
    if price < 0:
        raise ProductError(f"negative_price: {what} is {value}")
    if price != price.quantize(Decimal(1).scaleb(-PRICE_SCALE), rounding="ROUND_DOWN") or price >= MAX_PRICE:
        raise ProductError(f"bad_price: {what} {value!r} does not fit decimal(18,4)")
    return price


def _category(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProductError(f"bad_category: category is {_shown(value)}")
    return value.strip() or None


def _fields(shape: str, item: dict) -> tuple[Any, Any, Decimal, str, str | None]:
    """``(native id, title, price, currency, category)`` of an item of ``shape``."""
    if shape == CURSOR:
        price = parse_price(item.get("price"))
        return item.get("id"), item.get("title"), price, "USD", _category(item.get("category"))
    if shape == OFFSET:
        pricing = item.get("pricing")
        if not isinstance(pricing, dict):
            raise ProductError(f"bad_price: pricing is {_shown(pricing)}")
        price = parse_price(pricing.get("amount"), "pricing.amount")
        currency = pricing.get("currency", "USD")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            raise ProductError(f"bad_currency: pricing.currency is {_shown(currency)}")
        return item.get("sku"), item.get("name"), price, currency.upper(), _category(item.get("category"))
    if shape == PAGES:
        price = parse_price(item.get("price_cents"), "price_cents", cents=True)
        return item.get("productId"), item.get("label"), price, "USD", _category(item.get("dept"))
    raise ValueError(f"unknown shape {shape!r}")


def normalize_item(shape: str, source: str, item: Any, fetched_at: float) -> dict:
    """The unified product record of an item (see the module docstring); raises ProductError."""
    if not isinstance(item, dict):
        raise ProductError(f"not_an_object: the item is a JSON {_JSON_TYPES.get(type(item), type(item).__name__)}")
    native_id, title, price, currency, category = _fields(shape, item)
    return {
        "id": f"{source}:{_text(native_id, 'missing_id', 'id')}",
        "title": _text(title, "missing_title", "title"),
        "source": source,
        "price": price,
        "currency": currency,
        "category": category,
        "processed_at": int(round(fetched_at * 1_000_000)),
    }


def product_record(product: Mapping) -> dict:
    """A product as JSON values: price as a number, ``processed_at`` as ISO 8601 UTC."""
    return {**product, "price": float(product["price"]), "processed_at": utc_iso(product["processed_at"], 6)}


def product_json(product: Mapping) -> str:
    """One product as compact JSON (see :func:`product_record`)."""
    return json.dumps(product_record(product), separators=(",", ":"))


def dead_letter(page: Page, index: int, item: Any, reason: str) -> dict:
    """A dead letter (``schemas/dead_letter.v1.avsc``): the page url, the item's 1-based place on it."""
    return {"source": page.url, "line": index + 1, "raw": json.dumps(item, separators=(",", ":")), "reason": reason}


def split_page(page: Page, schema: Mapping | None = None) -> tuple[list[dict], list[dict]]:
    """``(products, dead letters)`` of a page; a product the Avro ``schema`` refuses is a dead letter."""
    products, dead = [], []
    for index, item in enumerate(page.items):
        try:
            product = normalize_item(page.shape, page.source, item, page.fetched_at)
        except ProductError as exc:
            dead.append(dead_letter(page, index, item, str(exc)))
            continue
        if schema is not None and not validate(avro_datum(product), schema, raise_errors=False):
            dead.append(dead_letter(page, index, item, "schema: the record does not match the product schema"))
            continue
        product["_at"] = (page.number, index)
        products.append(product)
    return products, dead


def avro_datum(product: Mapping) -> dict:
    """The product as its Avro record: without the pipeline's own ``_`` keys."""
    return {key: value for key, value in product.items() if not key.startswith("_")}


def first_of_id(products: Iterable[dict]) -> tuple[dict, list[dict]]:
    """The product kept for an id (the earliest page and place) and the duplicates after it."""
    ordered = sorted(products, key=lambda product: product["_at"])
    return ordered[0], ordered[1:]


# --------------------------------------------------------------------------- statistics (pure)


def price_summary(prices: Sequence[Decimal]) -> dict:
    """count, min, max, mean, median of prices (as numbers rounded to 4 decimals)."""
    ordered = sorted(prices)
    mean = sum(ordered, Decimal(0)) / len(ordered)
    return {
        "count": len(ordered),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "mean": round(float(mean), PRICE_SCALE),
        "median": round(float(statistics.median(ordered)), PRICE_SCALE),
    }


def stats_of(prices_by_group: Mapping[tuple[str, str], Sequence[Decimal]]) -> dict:
    """``categories`` (count per category overall and per source) and ``price_stats`` per source,
    per category, and per (source, category). An empty category is ``uncategorized``."""
    by_source: dict[str, list] = {}
    by_category: dict[str, list] = {}
    nested: dict[str, dict[str, dict]] = {}
    for (source, category), prices in sorted(prices_by_group.items()):
        category = category or "uncategorized"
        by_source.setdefault(source, []).extend(prices)
        by_category.setdefault(category, []).extend(prices)
        nested.setdefault(source, {})[category] = price_summary(prices)
    return {
        "categories": {
            "overall": {category: len(prices) for category, prices in sorted(by_category.items())},
            "by_source": {source: {c: s["count"] for c, s in groups.items()} for source, groups in nested.items()},
        },
        "price_stats": {
            "by_source": {source: price_summary(prices) for source, prices in sorted(by_source.items())},
            "by_category": {category: price_summary(prices) for category, prices in sorted(by_category.items())},
            "by_source_and_category": nested,
        },
    }


def counts_balance(reports: Sequence[Mapping], products: int, dead_letters: int) -> dict:
    """Items received (the endpoints' reports) = products + dead letters, and pages ok/failed."""
    items = sum(report["items"] for report in reports)
    return {
        "items_received": items,
        "products": products,
        "dead_lettered": dead_letters,
        "balanced": items == products + dead_letters,
    }


# --------------------------------------------------------------------------- Beam stages


# --------------------------------------------------------------------------- sorted JSON-lines files


def merged_lines(parts: Sequence[str], sort_key: Callable[[str], Any]) -> Iterator[str]:
    """The lines of sorted part files, merged in sort order, streaming (one line per part held)."""
    streams = [FileSystems.open(path) for path in parts]
    try:
        iterators = [(line.decode("utf-8").rstrip("\n") for line in stream) for stream in streams]
        yield from heapq.merge(*iterators, key=sort_key)
    finally:
        for stream in streams:
            stream.close()


def product_sort_key(line: str) -> str:
    return json.loads(line)["id"]


def dead_letter_sort_key(line: str) -> tuple:
    record = json.loads(line)
    return record["source"], record["line"], record["reason"]


def product_line(product: Mapping) -> tuple[str, str]:
    """``(sort key, products.jsonl line)``: products are written in id order."""
    return product["id"], product_json(product)


def dead_letter_line(letter: Mapping) -> tuple[tuple, str]:
    """``(sort key, dead_letter.jsonl line)``: by source, line and reason."""
    return (letter["source"], letter["line"], letter["reason"]), json.dumps(letter, separators=(",", ":"))


def delivery_block(report: Mapping, products: int, dead_letters: Sequence[Mapping]) -> dict:
    """``summary.json``'s ``delivery``: the sink's report, its dead letters, and whether every
    product was delivered or dead-lettered (``balanced``)."""
    settled = report["delivered"] + report["dead_lettered"]
    return {**report, "products": products, "balanced": settled == products == report["received"],
            "dead_letters": sorted(dead_letters, key=lambda letter: letter["key"])}


def summary_head(reports: Sequence[Mapping], products: int, seconds: float) -> dict:
    """The ``summary`` block: totals, time, the share of pages fetched, and each source's report."""
    pages = sum(report["pages"] for report in reports)
    failed = sum(report["pages_failed"] for report in reports)
    return {
        "total_products": products,
        "processing_time_seconds": round(seconds, 3),
        "success_rate": round(pages / (pages + failed), 4) if pages + failed else 0.0,
        "sources": {report["source"]: {key: value for key, value in report.items() if key != "source"}
                    for report in reports},
    }


def stream_summary(stream, document: Mapping, product_lines: Iterator[str], errors: Sequence[Mapping]) -> None:
    """``summary.json`` with ``summary`` first, then ``products`` streamed, then ``errors`` and the rest."""
    write = lambda text: stream.write(text.encode("utf-8"))  # noqa: E731  (one short projection)
    write('{"summary": ' + json.dumps(document["summary"], indent=2) + ',\n"products": [')
    for n, line in enumerate(product_lines):
        write(("\n  " if n == 0 else ",\n  ") + line)
    write('\n],\n"errors": ' + json.dumps(list(errors), indent=2))
    for key, value in document.items():
        if key != "summary":
            write(f",\n{json.dumps(key)}: " + json.dumps(value, indent=2))
    write("\n}\n")


def write_lines(output_dir: str, name: str, lines: Iterator[str]) -> None:
    """Write ``lines`` (each without its newline) as ``output_dir/name``."""
    with FileSystems.create(FileSystems.join(output_dir, name)) as stream:
        for line in lines:
            stream.write(line.encode("utf-8") + b"\n")


