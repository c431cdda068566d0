"""Tenant isolation: windows per (tenant, symbol), --partition_by_tenant, and a malformed flood
from one tenant that leaves every other tenant's outputs exactly as they were."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from beam_pipeline import cli
from beam_pipeline.devtools.reference import run_reference
from tests.beam_pipeline.test_avro_output import read_with_apache_avro
from transforms.quotes.tenants import UNATTRIBUTED
from transforms.windows.logic import parse_window

T0 = datetime(2024, 1, 1)
PER_TENANT_FILES = ("mid_prices.log", "errors.log", "dead_letter.jsonl", "windows.jsonl", "late.jsonl")
HEADER = "timestamp,symbol,bid,ask,latency_ms,tenant\n"


def stamp(ms: int) -> str:
    return (T0 + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def clean_rows(tenant: str, seed: int, count: int) -> list[tuple[int, str]]:
    """``(ms, csv line)`` of one tenant's quotes: two symbols, latencies over and under the 20 ms
    threshold (some late in streaming), and a few of its own dead letters (crossed quotes)."""
    rng = random.Random(seed)
    rows, ms = [], 0
    for index in range(count):
        ms += rng.randint(1, 40)
        bid = rng.randint(10_000, 10_100)
        ask = bid + rng.randint(0, 30)
        if index % 23 == 7:
            bid, ask = ask + 5, ask  # crossed: the tenant's own dead letter
        latency = rng.choice([0, 1, 5, 12, 19, 20, 21, 45, 130])
        rows.append((ms, f"{stamp(ms)},{rng.choice('XY')},{bid / 100:.2f},{ask / 100:.2f},{latency},{tenant}\n"))
    return rows


FLOOD_KINDS = (
    lambda ms, rng: f"{stamp(ms)},X,abc,1.0,5,mallory\n",  # bad price
    lambda ms, rng: f"{stamp(ms)},X,2.0,1.0,5,mallory\n",  # crossed
    lambda ms, rng: f"{stamp(ms)}, ,1.0,1.1,5,mallory\n",  # missing symbol
    lambda ms, rng: "yesterday,X,1.0,1.1,5,mallory\n",  # bad timestamp
    lambda ms, rng: ",X,1.0,1.1,5,mallory\n",  # missing timestamp
    lambda ms, rng: f"{stamp(ms)},X,1.0,1.1,-3,mallory\n",  # bad latency
    lambda ms, rng: f"{stamp(ms)},X,1.0,1.1\n",  # wrong field count: unattributable
    lambda ms, rng: f'{stamp(ms)},"X,1.0,1.1,5,mallory\n',  # unterminated quote: unattributable
    lambda ms, rng: f"{stamp(ms)},X,1.0,1.1,5,../acme\n",  # a tenant that is not a name
    lambda ms, rng: f"{stamp(ms)},X,1.0,1.1,5,acme/zeta\n",
    lambda ms, rng: f"{stamp(ms)},X,1.0,0.00000000001,5,mallory\n",  # more decimals than the schema
    lambda ms, rng: f"{stamp(ms)},X,1.0,1.1,5,mallory\n",  # and some valid quotes of its own
)


def flood_rows(seed: int, count: int, span_ms: int, far_future: bool) -> list[tuple[int, str]]:
    """``(ms, line)`` of malformed quotes from tenant "mallory", in timestamp order over the span.
    ``far_future``: also rows with a timestamp a day ahead and a bad price (only in a file of their own:
    in a shared file they would make later rows out of order, see docs/contract.md, Tenants)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        ms = rng.randint(0, span_ms)
        rows.append((ms, rng.choice(FLOOD_KINDS)(ms, rng)))
    if far_future:
        rows += [(span_ms + 86_400_000 + i, f"{stamp(span_ms + 86_400_000 + i)},X,oops,1,0,mallory\n")
                 for i in range(count // 10)]
    return sorted(rows, key=lambda row: row[0])


def write(path: Path, rows: list[tuple[int, str]]) -> Path:
    path.write_text(HEADER + "".join(line for _, line in rows))
    return path


def run(inputs: str | Path, out: Path, *extra: str) -> dict:
    """Run the CLI with ``--partition_by_tenant``; the counts must balance."""
    argv = ["--input", str(inputs), "--output_dir", str(out), "--progress", "off", "--partition_by_tenant", *extra]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["balanced"] and metrics.get("windows_balanced", True), metrics
    return metrics


def tenant_files(out: Path, tenant: str) -> dict[str, str]:
    folder = out / f"tenant={tenant}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(PER_TENANT_FILES)
    return {name: (folder / name).read_text() for name in PER_TENANT_FILES}


def assert_flooded(metrics: dict, out: Path, clean_count: int) -> None:
    """The flood was real and went where it belongs: mallory's and the unattributed partition."""
    partitions = metrics["partitions"]
    flood_dead = partitions["tenant=mallory"]["dead_lettered"] + partitions[f"tenant={UNATTRIBUTED}"]["dead_lettered"]
    assert flood_dead >= 3 * clean_count
    assert set(partitions) == {"tenant=acme", "tenant=zeta", "tenant=mallory", f"tenant={UNATTRIBUTED}"}
    reasons = {json.loads(line)["reason"].split(":")[0]
               for tenant in ("mallory", UNATTRIBUTED)
               for line in (out / f"tenant={tenant}" / "dead_letter.jsonl").read_text().splitlines()}
    assert {"bad_price", "crossed_quote", "missing_symbol", "bad_timestamp", "bad_latency", "wrong_field_count",
            "bad_csv", "bad_tenant", "price_precision"} <= reasons
    assert not list(out.glob("*.log")) and not list(out.glob("*.jsonl"))  # nothing outside the partitions


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_a_malformed_flood_in_its_own_file_changes_no_other_tenants_outputs(tmp_path, mode):
    count = 400 if mode == "batch" else 60
    clean_dir, flooded_dir = tmp_path / "clean", tmp_path / "flooded"
    for folder in (clean_dir, flooded_dir):
        folder.mkdir()
        write(folder / "acme.csv", clean_rows("acme", 1, count))
        write(folder / "zeta.csv", clean_rows("zeta", 2, count))
    span = max(ms for ms, _ in clean_rows("acme", 1, count))
    write(flooded_dir / "mallory.csv", flood_rows(3, 8 * count, span, far_future=True))
    args = ["--window", "fixed:100ms", "--allowed_lateness", "20ms"]
    if mode == "streaming":
        args.append("--streaming")
    clean = run(clean_dir / "*.csv", tmp_path / "out-clean", *args)
    flooded = run(flooded_dir / "*.csv", tmp_path / "out-flooded", *args)
    assert_flooded(flooded, tmp_path / "out-flooded", 2 * count)
    for tenant in ("acme", "zeta"):
        before, after = tenant_files(tmp_path / "out-clean", tenant), tenant_files(tmp_path / "out-flooded", tenant)
        assert before["mid_prices.log"] and before["errors.log"] and before["dead_letter.jsonl"]  # non-trivial
        if mode == "streaming":
            assert before["late.jsonl"] and '"LATE"' in before["windows.jsonl"]
        for name in PER_TENANT_FILES:
            # The dead letters name their file: the same path in another folder.
            assert after[name] == before[name].replace(str(clean_dir), str(flooded_dir)), (tenant, name)
        assert clean["partitions"][f"tenant={tenant}"] == flooded["partitions"][f"tenant={tenant}"]


def test_a_malformed_flood_interleaved_in_a_shared_file_changes_no_other_tenants_outputs(tmp_path):
    """One file for all tenants, the flood between their rows (in timestamp order): every other
    tenant's outputs are the same, dead letters and late quotes up to their line numbers."""
    tenants_rows = sorted(clean_rows("acme", 1, 400) + clean_rows("zeta", 2, 400), key=lambda row: row[0])
    span = tenants_rows[-1][0]
    flood = flood_rows(3, 3_000, span, far_future=False)
    merged = sorted([(ms, 0, i, line) for i, (ms, line) in enumerate(tenants_rows)]
                    + [(ms, 1, i, line) for i, (ms, line) in enumerate(flood)])
    line_in_clean = {}  # flooded file line -> clean file line (the header is line 1)
    for flooded_line, (_, is_flood, index, _) in enumerate(merged, start=2):
        if not is_flood:
            line_in_clean[flooded_line] = index + 2
    clean_csv = write(tmp_path / "clean.csv", tenants_rows)
    flooded_csv = tmp_path / "flooded.csv"
    flooded_csv.write_text(HEADER + "".join(line for *_, line in merged))
    clean = run(clean_csv, tmp_path / "out-clean", "--window", "sliding:200ms,100ms")
    flooded = run(flooded_csv, tmp_path / "out-flooded", "--window", "sliding:200ms,100ms")
    assert_flooded(flooded, tmp_path / "out-flooded", len(tenants_rows))
    for tenant in ("acme", "zeta"):
        before, after = tenant_files(tmp_path / "out-clean", tenant), tenant_files(tmp_path / "out-flooded", tenant)
        assert before["dead_letter.jsonl"]
        for name in ("mid_prices.log", "errors.log", "windows.jsonl"):
            assert after[name] == before[name], (tenant, name)
        for name in ("dead_letter.jsonl", "late.jsonl"):
            renumbered = []
            for line in after[name].splitlines():
                record = json.loads(line)
                record["line"], record["source"] = line_in_clean[record["line"]], str(clean_csv)
                renumbered.append(record)
            assert renumbered == [json.loads(line) for line in before[name].splitlines()], (tenant, name)
        assert clean["partitions"][f"tenant={tenant}"] == flooded["partitions"][f"tenant={tenant}"]


def test_windows_are_per_tenant_and_symbol_in_batch_streaming_and_the_reference(tmp_path, write_csv):
    """The same symbol in two tenants is two series: batch, streaming (all on time) and the
    plain-Python reference agree, and no pane mixes tenants."""
    rows = sorted(clean_rows("acme", 1, 150) + clean_rows("zeta", 2, 150) + clean_rows("", 4, 150))
    source = write_csv(HEADER + "".join(line for _, line in rows))
    outputs = {}
    for name, extra in {"batch": [], "streaming": ["--streaming", "--watermark_lag", "inf"]}.items():
        out = tmp_path / name
        assert cli.main(["--input", str(source), "--output_dir", str(out), "--progress", "off",
                         "--window", "session:30ms", *extra]) == 0
        outputs[name] = (out / "windows.jsonl").read_text()
    run_reference([str(source)], str(tmp_path / "ref"), window=parse_window("session:30ms"))
    assert outputs["batch"] == outputs["streaming"] == (tmp_path / "ref" / "windows.jsonl").read_text()
    panes = [json.loads(line) for line in outputs["batch"].splitlines()]
    assert {pane["tenant"] for pane in panes} == {"acme", "zeta", "default"}
    for tenant in ("acme", "zeta", "default"):
        # Each tenant's panes count exactly its own valid quotes (the crossed ones are dead letters).
        own = [line for _, line in rows if line.rstrip("\n").split(",")[-1] == ("" if tenant == "default" else tenant)]
        valid = [line for line in own if float(line.split(",")[2]) <= float(line.split(",")[3])]
        assert sum(p["count"] for p in panes if p["tenant"] == tenant) == len(valid)


def test_without_partitioning_the_outputs_stay_at_the_top(tmp_path, write_csv):
    source = write_csv(HEADER + "".join(line for _, line in clean_rows("acme", 1, 50)))
    out = tmp_path / "out"
    assert cli.main(["--input", str(source), "--output_dir", str(out), "--progress", "off"]) == 0
    assert not list(out.glob("tenant=*"))
    assert "partitions" not in json.loads((out / "metrics.json").read_text())
    assert (out / "mid_prices.log").read_text().count("\n") > 20


def test_avro_output_is_partitioned_too(tmp_path, write_csv):
    rows = sorted(clean_rows("acme", 1, 120) + clean_rows("zeta", 2, 120))
    source = write_csv(HEADER + "".join(line for _, line in rows))
    out, avro_dir = tmp_path / "out", tmp_path / "avro"
    metrics = run(source, out, "--avro_output", str(avro_dir), "--block_bytes", "2048")
    assert sorted(p.name for p in avro_dir.iterdir()) == ["tenant=acme", "tenant=zeta"]
    for tenant in ("acme", "zeta"):
        folder = avro_dir / f"tenant={tenant}"
        assert len(list(folder.glob("quotes-*.avro"))) > 1  # several blocks, each split by tenant
        mids, _ = read_with_apache_avro(sorted(folder.glob("mid_prices-*.avro")))
        quotes, _ = read_with_apache_avro(sorted(folder.glob("quotes-*.avro")))
        assert {r["tenant"] for r in mids} == {r["tenant"] for r in quotes} == {tenant}
        assert len(mids) == metrics["partitions"][f"tenant={tenant}"]["mid_prices"]
        assert len(quotes) == len(mids) + metrics["partitions"][f"tenant={tenant}"]["latency_filtered"]


def test_a_file_without_tenants_is_all_the_default_tenants_broken_lines_included(tmp_path, write_csv):
    source = write_csv("timestamp,bid,ask\n2024-01-01 00:00:00,1,2\n2024-01-01 00:00:01,1\n"
                       '2024-01-01 00:00:02,"1,2\n2024-01-01 00:00:03,x,2\n')
    out = tmp_path / "out"
    metrics = run(source, out)
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["tenant=default"]
    dead = (out / "tenant=default" / "dead_letter.jsonl").read_text()
    assert [json.loads(line)["reason"].split(":")[0] for line in dead.splitlines()] == [
        "wrong_field_count", "bad_csv", "bad_price"]
    assert metrics["partitions"]["tenant=default"]["dead_lettered"] == 3
