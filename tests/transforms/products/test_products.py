"""Product normalization, statistics and the summary writer."""

from __future__ import annotations

import json
import statistics
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from fastavro.validation import validate

from schemas import load_schema
from transforms.products.normalize import (
    DEAD_LETTERS,
    PRODUCTS,
    ProductError,
    counts_balance,
    normalize_item,
    parse_price,
    price_summary,
    split_page,
    stats_of,
)
from transforms.products.paginate import CURSOR, OFFSET, PAGES, Page
from transforms.products.stage import NormalizeProducts, WriteSummary

FETCHED_AT = 1_767_225_600.25  # 2026-01-01T00:00:00.25Z
SCHEMA = load_schema("product", 1)


def page(shape, items, source="src", number=1):
    return Page(source, shape, number, f"http://h/{source}?page={number}", tuple(items), FETCHED_AT)


# --------------------------------------------------------------------------- items → records


@pytest.mark.parametrize("shape, item, expected", [
    (CURSOR, {"id": 17, "title": " Book ", "price": 12.5, "category": "books"},
     ("cat:17", "Book", Decimal("12.5"), "USD", "books")),
    (OFFSET, {"sku": "MK-1", "name": "Toy", "pricing": {"amount": "0.10", "currency": "eur"}, "category": {"name": "toys"}},
     ("cat:MK-1", "Toy", Decimal("0.10"), "EUR", "toys")),
    (PAGES, {"productId": "s-3", "label": "Rake", "price_cents": 1999, "dept": None},
     ("cat:s-3", "Rake", Decimal("19.99"), "USD", None)),
])
def test_each_shape_maps_to_the_unified_record(shape, item, expected):
    product = normalize_item(shape, "cat", item, FETCHED_AT)
    assert (product["id"], product["title"], product["price"], product["currency"], product["category"]) == expected
    assert product["source"] == "cat" and product["processed_at"] == 1_767_225_600_250_000
    assert validate(product, SCHEMA, raise_errors=False)


@pytest.mark.parametrize("shape, item, reason", [
    (CURSOR, "just text", "not_an_object: the item is a JSON string"),
    (CURSOR, [1], "not_an_object: the item is a JSON array"),
    (CURSOR, {"title": "t", "price": 1}, "missing_id: id is missing"),
    (CURSOR, {"id": "  ", "title": "t", "price": 1}, "missing_id: id is empty"),
    (CURSOR, {"id": True, "title": "t", "price": 1}, "missing_id"),
    (CURSOR, {"id": 1, "title": "", "price": 1}, "missing_title: title is empty"),
    (CURSOR, {"id": 1, "title": "t", "price": "N/A"}, "bad_price: price 'N/A' is not a number"),
    (CURSOR, {"id": 1, "title": "t", "price": -0.01}, "negative_price"),
    (CURSOR, {"id": 1, "title": "t", "price": 1.00001}, "does not fit decimal(18,4)"),
    (CURSOR, {"id": 1, "title": "t", "price": 1, "category": 5}, "bad_category"),
    (OFFSET, {"sku": "a", "name": "n", "pricing": "12"}, "bad_price: pricing is"),
    (OFFSET, {"sku": "a", "name": "n", "pricing": {"amount": "1", "currency": "dollars"}}, "bad_currency"),
    (PAGES, {"productId": "p", "label": "l", "price_cents": 10.5}, "not a whole number of cents"),
    (PAGES, {"productId": "p", "label": "l", "price_cents": "nan"}, "bad_price"),
])
def test_malformed_items_say_why(shape, item, reason):
    with pytest.raises(ProductError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        normalize_item(shape, "s", item, FETCHED_AT)


def test_prices_are_exact():
    assert parse_price(0.1) + parse_price(0.2) == Decimal("0.3")
    assert parse_price("1e2") == Decimal(100)
    assert parse_price(1999, cents=True) == Decimal("19.99")


def test_split_page_accounts_for_every_item():
    items = [{"id": 1, "title": "a", "price": 1}, "bad", {"id": 2, "title": "b", "price": "x"}]
    products, dead = split_page(page(CURSOR, items), SCHEMA)
    assert [p["id"] for p in products] == ["src:1"] and products[0]["_at"] == (1, 0)
    assert [(d["line"], d["reason"].split(":")[0]) for d in dead] == [(2, "not_an_object"), (3, "bad_price")]
    assert dead[0]["source"] == "http://h/src?page=1" and json.loads(dead[1]["raw"]) == items[2]


# --------------------------------------------------------------------------- statistics


def test_price_summary_matches_the_statistics_module():
    prices = [Decimal(p) for p in ("3.10", "1.00", "2.55", "10.00")]
    floats = [float(p) for p in prices]
    assert price_summary(prices) == {
        "count": 4, "min": 1.0, "max": 10.0,
        "mean": round(statistics.mean(floats), 4), "median": round(statistics.median(floats), 4),
    }


def test_stats_per_source_category_and_both():
    stats = stats_of({("a", "x"): [Decimal(1), Decimal(3)], ("a", ""): [Decimal(5)], ("b", "x"): [Decimal(7)]})
    assert stats["categories"]["overall"] == {"uncategorized": 1, "x": 3}
    assert stats["categories"]["by_source"] == {"a": {"x": 2, "uncategorized": 1}, "b": {"x": 1}}
    assert stats["price_stats"]["by_source"]["a"]["median"] == 3.0
    assert stats["price_stats"]["by_category"]["x"] == {"count": 3, "min": 1.0, "max": 7.0, "mean": 3.6667, "median": 3.0}
    assert stats["price_stats"]["by_source_and_category"]["b"]["x"]["count"] == 1


def test_counts_balance_checks_items_against_outcomes():
    reports = [{"items": 5}, {"items": 3}]
    assert counts_balance(reports, 6, 2)["balanced"]
    assert not counts_balance(reports, 6, 1)["balanced"]


# --------------------------------------------------------------------------- Beam stages


def test_normalize_products_keeps_the_first_of_each_id_and_dead_letters_the_rest():
    pages = [
        page(CURSOR, [{"id": 1, "title": "first", "price": 1}, {"id": 2, "title": "b", "price": "?"}], number=1),
        page(CURSOR, [{"id": 1, "title": "again", "price": 1}, {"id": 3, "title": "c", "price": 3}], number=2),
    ]
    with beam.Pipeline() as pipeline:
        out = pipeline | beam.Create(pages) | NormalizeProducts(SCHEMA)
        assert_that(out[PRODUCTS] | "Titles" >> beam.Map(lambda p: (p["id"], p["title"])),
                    equal_to([("src:1", "first"), ("src:3", "c")]), label="products")
        assert_that(out[DEAD_LETTERS] | "Reasons" >> beam.Map(lambda d: d["reason"].split(":")[0]),
                    equal_to(["bad_price", "duplicate_id"]), label="dead")


def test_write_summary_streams_products_sorted_and_balances(tmp_path):
    products = [normalize_item(CURSOR, "s", {"id": i, "title": f"t{i}", "price": i, "category": "c"}, FETCHED_AT)
                for i in (3, 1, 2)]
    dead = [{"source": "u", "line": 1, "raw": "x", "reason": "bad_price: no"}]
    reports = [{"source": "s", "endpoint": "http://h/s", "shape": CURSOR, "pages": 1, "pages_failed": 1, "items": 4}]
    errors = [{"source": "s", "page": 2, "kind": "timeout"}]
    with beam.Pipeline() as pipeline:
        _ = {
            PRODUCTS: pipeline | "P" >> beam.Create(products),
            DEAD_LETTERS: pipeline | "D" >> beam.Create(dead),
            "errors": pipeline | "E" >> beam.Create(errors),
            "reports": pipeline | "R" >> beam.Create(reports),
        } | WriteSummary(str(tmp_path), "run1", started_at=100.0, clock=lambda: 112.5)
    document = json.loads((tmp_path / "summary.json").read_text())
    assert list(document)[:3] == ["summary", "products", "errors"]
    summary = document["summary"]
    assert (summary["total_products"], summary["processing_time_seconds"], summary["success_rate"]) == (3, 12.5, 0.5)
    assert summary["sources"]["s"]["shape"] == CURSOR
    assert [p["id"] for p in document["products"]] == ["s:1", "s:2", "s:3"]
    assert document["products"][0]["processed_at"] == "2026-01-01T00:00:00.250000Z"
    assert document["errors"] == errors
    assert document["counts"] == {"items_received": 4, "products": 3, "dead_lettered": 1, "balanced": True}
    assert document["price_stats"]["by_source"]["s"]["median"] == 2.0
    assert [json.loads(line)["id"] for line in (tmp_path / "products.jsonl").read_text().splitlines()] == ["s:1", "s:2", "s:3"]
    assert json.loads((tmp_path / "dead_letter.jsonl").read_text()) == dead[0]
    assert not list(tmp_path.glob(".products-*")), "the part files are cleaned up"
