"""``python -m beam_pipeline --job products``: end to end against the mock APIs on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from beam_pipeline.cli import main
from beam_pipeline.devtools.mock_api import start_product_apis
from transforms.products.normalize import ProductError, normalize_item

ID_FIELD = {"cursor": "id", "offset": "sku", "pages": "productId"}
NAMES = {"cursor": "catalog", "offset": "market", "pages": "shop"}
SUMMARY_KEYS = {"total_products", "processing_time_seconds", "success_rate", "sources"}


def valid_ids(server) -> set[str]:
    """The ids a correct job produces from a mock: every item that normalizes, named by source."""
    ids = set()
    for item in server.catalogue():
        try:
            ids.add(normalize_item(server.shape, NAMES[server.shape], item, 0.0)["id"])
        except ProductError:
            pass
    return ids


def read(output_dir) -> dict:
    return json.loads((output_dir / "summary.json").read_text())


def test_products_from_three_flaky_apis_exactly_once(tmp_path, capsys):
    with start_product_apis(failure_rate=0.2, stall_seconds=1.0, seed=5) as servers:
        urls = ",".join(server.url for server in servers)
        rc = main(["--job", "products", "--endpoints", urls, "--output_dir", str(tmp_path), "--http_timeout", "0.5"])
        expected = set().union(*(valid_ids(server) for server in servers))
        failures = sum(request.status >= 500 for server in servers for request in server.requests())
        malformed = sum(len(server.malformed_indexes()) for server in servers)
    assert rc == 0
    assert failures > 0, "the mocks injected no failure: the test proves nothing"
    document = read(tmp_path)
    assert list(document)[:3] == ["summary", "products", "errors"]
    assert set(document["summary"]) == SUMMARY_KEYS
    ids = [product["id"] for product in document["products"]]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert document["summary"]["total_products"] == len(expected)
    assert document["summary"]["success_rate"] == 1.0 and document["errors"] == []
    assert set(document["summary"]["sources"]) == set(NAMES.values())
    assert all(set(product) == {"id", "title", "source", "price", "currency", "category", "processed_at"}
               for product in document["products"])
    dead = (tmp_path / "dead_letter.jsonl").read_text().splitlines()
    assert len(dead) == malformed and document["counts"]["balanced"]
    for stats in document["price_stats"]["by_source"].values():
        assert set(stats) == {"count", "min", "max", "mean", "median"} and stats["min"] <= stats["median"] <= stats["max"]
    assert sum(document["categories"]["overall"].values()) == len(expected)
    assert "products from 3 sources" in capsys.readouterr().out


def test_a_dead_endpoint_is_errors_and_an_open_breaker_while_the_rest_finish(tmp_path):
    overrides = {"pages": {"failure_rate": 1.0, "timeout_share": 0.0}}
    with start_product_apis(failure_rate=0.0, seed=2, overrides=overrides) as servers:
        urls = ",".join(server.url for server in servers)
        rc = main(["--job", "products", "--endpoints", urls, "--output_dir", str(tmp_path), "--breaker_cooldown", "0.3"])
        expected = valid_ids(servers[0]) | valid_ids(servers[1])
    assert rc == 0
    document = read(tmp_path)
    assert {product["id"] for product in document["products"]} == expected
    [error] = document["errors"]
    assert {"endpoint", "page", "kind", "timestamp"} <= set(error)
    assert (error["source"], error["page"], error["kind"]) == ("shop", 1, "server_error")
    shop = document["summary"]["sources"]["shop"]
    assert shop["breaker_state"] == "open" and shop["breaker_opened"] >= 1
    assert document["summary"]["success_rate"] == round(14 / 15, 4)


@pytest.mark.parametrize("argv, message", [
    (["--job", "products"], "needs either --endpoints"),
    (["--job", "products", "--mock", "--endpoints", "http://127.0.0.1:1/x"], "needs either --endpoints"),
    (["--job", "products", "--endpoints", "ftp://x/y"], "not an http(s) url"),
    (["--job", "products", "--mock", "--window", "fixed:1s"], "--window is a quotes-job flag"),
    (["--job", "products", "--mock", "--max_requests_per_second", "0"], "rate must be positive"),
])
def test_usage_errors_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_products_delivered_downstream_once_even_when_the_job_runs_again(tmp_path):
    from beam_pipeline.devtools.mock_api import MockDownstreamApi

    with start_product_apis(failure_rate=0.0, seed=4) as servers, \
            MockDownstreamApi(failure_rate=0.15, rate_limit=5.0, seed=3) as downstream:
        urls = ",".join(server.url for server in servers)
        argv = ["--job", "products", "--endpoints", urls, "--deliver_url", downstream.url, "--deliver_rate", "8",
                "--deliver_batch_size", "40"]
        assert main([*argv, "--output_dir", str(tmp_path / "first")]) == 0
        assert main([*argv, "--output_dir", str(tmp_path / "again")]) == 0
        accepted = [key for key, _ in downstream.accepted()]
        stats = downstream.stats()
    first, again = read(tmp_path / "first"), read(tmp_path / "again")
    products = len(first["products"])
    assert len(accepted) == len(set(accepted)) == products, "every product stored once, across both runs"
    assert stats["rate_limited"] > 0 and stats["failed_before_apply"] + stats["failed_after_apply"] > 0
    delivery = first["delivery"]
    assert delivery["balanced"] and delivery["delivered"] == products and delivery["dead_letters"] == []
    assert delivery["rate_limited"] == stats["rate_limited"] - again["delivery"]["rate_limited"]
    assert again["delivery"]["duplicates"] == products, "the second run's products were all already there"
