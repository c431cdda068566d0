"""The run report (beam_pipeline.report): report.png and a self-contained report.html.

The runs are the bundled sample through ``beam_pipeline.cli.main``: the default job, one with
``--window fixed:1s`` (batch: windows, nothing late) and one with ``--window fixed:1s --streaming``
(the replay's watermark makes 58 quotes late). The Chromium test renders a page in Debian's
headless Chromium and is skipped only where Chromium is not installed.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from beam_pipeline import cli
from beam_pipeline.report import (
    INSTALL_HINT,
    REPORT_HTML,
    REPORT_PNG,
    Candles,
    ReportError,
    figure_height_px,
    merge_candles,
    minmax_indices,
    render_png,
    report_data,
    thin_indices,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYMBOLS = ["AAPL", "BTCUSD", "EURUSD"]
RUNS = {
    "plain": (),
    "window": ("--window", "fixed:1s"),
    "late": ("--window", "fixed:1s", "--streaming"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Each run of :data:`RUNS` on the bundled sample, with its report written (default size)."""
    folders = {}
    for name, args in RUNS.items():
        out = tmp_path_factory.mktemp(name) / "out"
        assert cli.main(["--output_dir", str(out), "--progress", "off", *args]) == 0
        png, page = write_report(str(out))
        assert (png, page) == (str(out / REPORT_PNG), str(out / REPORT_HTML))
        folders[name] = out
    return folders


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


class Page(HTMLParser):
    """Every tag with its attributes, and the cells of each table by the table's id."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._table = self._row = self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> dict[str, str]:
        """A two-column table (header row left out) as {first cell: second cell}."""
        return {row[0]: row[1] for row in self.tables[table][1:]}


def expected_counts(metrics: dict) -> dict[str, int]:
    """The counts table's label of each count metrics.json has, and the count."""
    labels = {
        "records in": "records_in",
        "mid prices": "mid_prices",
        f"latency filtered (> {metrics['latency_threshold_ms']} ms)": "latency_filtered",
        "dead letters": "dead_lettered",
        "window panes": "windows_emitted",
        "late (past allowed lateness)": "late_dropped",
    }
    return {label: metrics[name] for label, name in labels.items() if name in metrics}


def check_counts_table(page: Page, metrics: dict) -> None:
    shown = page.rows("counts")
    for label, count in expected_counts(metrics).items():
        assert int(shown[label].replace(",", "")) == count, label
    for check in metrics["balance_terms"]:
        assert any(label.startswith("balance") and value.startswith("yes") for label, value in shown.items()), check


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", list(RUNS))
def test_png_is_a_valid_image_of_the_expected_size(runs, name):
    from matplotlib.image import imread

    folder = runs[name]
    png = (folder / REPORT_PNG).read_bytes()
    assert png.startswith(PNG_MAGIC)
    image = imread(folder / REPORT_PNG)
    assert image.shape == (figure_height_px(report_data(str(folder))), 1600, 4)
    assert (image[..., :3] < 0.9).any(), "the figure is blank"


def test_png_size_follows_the_arguments(runs, tmp_path):
    from matplotlib.image import imread

    folder = tmp_path / "copy"
    shutil.copytree(runs["plain"], folder)
    png, _ = write_report(str(folder), width_px=900, height_px=1300)
    assert imread(png).shape == (1300, 900, 4)


@pytest.mark.parametrize("name", list(RUNS))
def test_html_is_self_contained_and_shows_the_counts(runs, name):
    folder = runs[name]
    text = (folder / REPORT_HTML).read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>")
    lowered = text.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered and "url(" not in lowered
    for tag, attrs in page.tags:
        for attr in ("src", "href", "srcset", "data", "action", "poster"):
            if attr in attrs:
                assert attrs[attr].startswith("data:"), (tag, attr, attrs[attr][:80])
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 1
    prefix = "data:image/png;base64,"
    assert images[0]["src"].startswith(prefix)
    assert base64.b64decode(images[0]["src"][len(prefix):]) == (folder / REPORT_PNG).read_bytes()

    metrics = metrics_of(folder)
    check_counts_table(page, metrics)
    reasons = {reason: int(count) for reason, count in page.rows("dead-letters").items()}
    assert reasons == metrics["dead_lettered_by_reason"]
    words = " ".join(page.text)
    assert metrics["inputs"][0] in words and f"{metrics['run_seconds']:.3f}" in words


def test_html_escapes_the_text(runs, tmp_path):
    folder = tmp_path / 'run <b>&"x"'
    shutil.copytree(runs["plain"], folder)
    _, html_path = write_report(str(folder))
    text = Path(html_path).read_text(encoding="utf-8")
    assert "<b>" not in text
    assert "run &lt;b&gt;&amp;&quot;x&quot;" in text
    assert str(folder) in " ".join(Page(text).text)


# --------------------------------------------------------------------------- the data plotted


@pytest.mark.parametrize("name", list(RUNS))
def test_series_add_up_to_the_metrics(runs, name):
    metrics = metrics_of(runs[name])
    data = report_data(str(runs[name]))
    assert list(data.series) == SYMBOLS
    assert data.notes == ([] if "windowing" in metrics else [data.notes[0]])
    assert data.valid_quotes == metrics["mid_prices"] + metrics["latency_filtered"]
    assert data.mid_prices == metrics["mid_prices"]
    assert data.latency_filtered == metrics["latency_filtered"]
    assert data.dead_letters == metrics["dead_lettered"]
    assert data.late == metrics.get("late_dropped", 0)
    for series in data.series.values():
        assert np.all(np.diff(series.event_us) >= 0), "not in event-time order"
        assert np.all(series.latency_ms[series.filtered] > metrics["latency_threshold_ms"])
        assert np.all(series.latency_ms[~series.filtered] <= metrics["latency_threshold_ms"])


def test_the_late_run_has_late_quotes(runs):
    assert metrics_of(runs["late"])["late_dropped"] > 0


def ms_text(event_us: int) -> str:
    return datetime.fromtimestamp(event_us / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def test_mids_are_those_of_mid_prices_log(runs):
    data = report_data(str(runs["plain"]))
    ours = sorted(
        (ms_text(int(t)), round(float(m), 8))
        for s in data.series.values() for t, m in zip(s.event_us[~s.filtered], s.mid[~s.filtered])
    )
    logged = sorted(
        (time, round(float(mid), 8))
        for time, mid in (line.split(", ") for line in (runs["plain"] / "mid_prices.log").read_text().splitlines())
    )
    assert ours == logged


def test_late_marks_are_the_quotes_of_late_jsonl(runs):
    folder = runs["late"]
    data = report_data(str(folder))
    marked = sorted(
        (symbol, ms_text(int(t))) for symbol, s in data.series.items() for t in s.event_us[s.late]
    )
    late = sorted(
        (row["symbol"], row["timestamp"].replace("T", " ").rstrip("Z"))
        for row in map(json.loads, (folder / "late.jsonl").read_text().splitlines())
    )
    assert marked == late and len(late) == metrics_of(folder)["late_dropped"]


def test_ohlc_from_windows_jsonl(runs):
    metrics = metrics_of(runs["window"])
    data = report_data(str(runs["window"]))
    assert data.candles_source == "windows.jsonl (fixed:1s)"
    assert sorted(data.candles) == SYMBOLS
    assert sum(len(c) for c in data.candles.values()) == metrics["windows_emitted"]
    assert sum(int(c.count.sum()) for c in data.candles.values()) == metrics["windowed_quotes"]
    first = json.loads((runs["window"] / "windows.jsonl").read_text().splitlines()[0])
    candle = data.candles[first["symbol"]]
    assert (candle.open[0], candle.high[0], candle.low[0], candle.close[0]) == (
        first["open"], first["high"], first["low"], first["close"])


def test_ohlc_merges_the_panes_of_a_window(runs):
    """The streaming run has LATE panes besides the ON_TIME ones: one candle per window all the same."""
    folder = runs["late"]
    panes = [json.loads(line) for line in (folder / "windows.jsonl").read_text().splitlines()]
    windows = {(p["symbol"], p["window_start"]) for p in panes}
    assert len(windows) < len(panes)
    data = report_data(str(folder))
    assert sum(len(c) for c in data.candles.values()) == len(windows)
    assert sum(int(c.count.sum()) for c in data.candles.values()) == sum(p["count"] for p in panes)


def test_ohlc_computed_without_windows(runs):
    metrics = metrics_of(runs["plain"])
    data = report_data(str(runs["plain"]))
    assert "computed" in data.candles_source and "--window" in data.notes[0]
    assert sum(int(c.count.sum()) for c in data.candles.values()) == metrics["mid_prices"]
    for symbol, candles in data.candles.items():
        series = data.series[symbol]
        mids = series.mid[~series.filtered]
        assert candles.high.max() == mids.max() and candles.low.min() == mids.min()
        assert np.all(candles.end_us - candles.start_us == 1_000_000)


# --------------------------------------------------------------------------- big inputs


def test_minmax_downsampling_keeps_the_extremes():
    walk = np.cumsum(np.random.default_rng(7).normal(size=1_000_003))
    kept = minmax_indices(walk, 20_000)
    assert len(kept) <= 20_000 and np.all(np.diff(kept) > 0)
    assert walk.argmax() in kept and walk.argmin() in kept
    assert list(minmax_indices(walk[:50], 100)) == list(range(50))


def test_markers_are_thinned():
    mask = np.zeros(100_000, dtype=bool)
    mask[::3] = True
    shown = thin_indices(mask, 2_000)
    assert len(shown) <= 2_000 and mask[shown].all() and shown[0] == 0


def test_merged_candles_keep_open_high_low_close_and_count():
    count = 1_001
    start = np.arange(count, dtype=np.int64) * 1_000_000
    values = np.random.default_rng(3).normal(size=(4, count))
    candles = Candles(start, start + 1_000_000, values[0], values[1], values[2], values[3],
                      np.ones(count, dtype=np.int64))
    merged = merge_candles(candles, 100)
    assert len(merged) <= 100
    assert merged.open[0] == values[0][0] and merged.close[-1] == values[3][-1]
    assert merged.high.max() == values[1].max() and merged.low.min() == values[2].min()
    assert merged.count.sum() == count and merged.end_us[-1] == start[-1] + 1_000_000


def test_small_point_caps_still_draw(runs):
    png = render_png(report_data(str(runs["late"])), width_px=800, max_points=50, max_markers=5, max_candles=10,
                     max_symbols=2)
    assert png.startswith(PNG_MAGIC)


# --------------------------------------------------------------------------- runs the report cannot replay


def test_a_run_without_inputs_still_gets_counts(tmp_path):
    metrics = {
        "records_in": 3, "mid_prices": 3, "latency_filtered": 0, "dead_lettered": 0, "source": "live",
        "live_url": "ws://127.0.0.1:1/quotes", "latency_threshold_ms": 20, "inputs": [], "run_seconds": 1.5,
        "balanced": True, "balance_terms": {"balanced": ["mid_prices", "latency_filtered", "dead_lettered"]},
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    png, page = write_report(str(tmp_path))
    assert Path(png).read_bytes().startswith(PNG_MAGIC)
    parsed = Page(Path(page).read_text(encoding="utf-8"))
    check_counts_table(parsed, metrics)
    assert "cannot replay" in " ".join(parsed.text)


def test_inputs_gone_since_the_run_leave_a_note(runs, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(runs["plain"], folder, ignore=shutil.ignore_patterns("report.*"))
    metrics = metrics_of(folder)
    metrics["inputs"] = [str(tmp_path / "gone.csv")]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    png, page = write_report(str(folder))
    assert Path(png).read_bytes().startswith(PNG_MAGIC)
    assert "cannot read the inputs again" in Path(page).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- errors


def test_missing_metrics_is_a_report_error_naming_the_folder(tmp_path):
    folder = tmp_path / "no-run-here"
    folder.mkdir()
    with pytest.raises(ReportError, match="no-run-here.*metrics.json"):
        write_report(str(folder))
    assert list(folder.iterdir()) == []


def test_missing_matplotlib_says_what_to_install(runs, tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(runs["plain"], folder, ignore=shutil.ignore_patterns("report.*"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError) as raised:
        write_report(str(folder))
    assert INSTALL_HINT in str(raised.value) and INSTALL_HINT == "pip install 'beam_pipeline[report]'"
    assert not (folder / REPORT_PNG).exists() and not (folder / REPORT_HTML).exists()


# --------------------------------------------------------------------------- in a browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --headless is Chromium's own headless mode (the old one is gone since 132); --no-sandbox because
    # CI runs as root; a fresh --user-data-dir per call so no profile lock or first-run state is shared.
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_chromium_renders_the_page(runs, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    from matplotlib.image import imread

    folder = runs["late"]
    url = (folder / REPORT_HTML).resolve().as_uri()
    shot = tmp_path / "screenshot.png"
    done = run_chromium(browser, tmp_path / "profile1", f"--screenshot={shot}", "--window-size=1200,1600", url)
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    assert shot.read_bytes().startswith(PNG_MAGIC)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    assert (pixels < 0.9).any(axis=2).mean() > 0.01, "the screenshot is blank"
    red, blue = pixels[..., 0], pixels[..., 2]
    assert ((blue - red > 0.2) & (blue > 0.5)).sum() > 100, "the embedded figure (blue lines and bars) is not shown"

    done = run_chromium(browser, tmp_path / "profile2", "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    page = Page(done.stdout)
    check_counts_table(page, metrics_of(folder))
    assert any(tag == "img" and attrs["src"].startswith("data:image/png;base64,") for tag, attrs in page.tags)



def test_the_cli_writes_the_report_after_the_run(tmp_path, capsys):
    from beam_pipeline import cli

    out = tmp_path / "out"
    assert cli.main(["--output_dir", str(out), "--progress", "off", "--report"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'report.html'}  the run report" in printed
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_the_products_job_refuses_report(tmp_path, capsys):
    from beam_pipeline import cli
    from tests.conftest import assert_one_line_usage_error

    rc = cli.main(["--job", "products", "--mock", "--output_dir", str(tmp_path / "out"), "--report"])
    assert "--report" in assert_one_line_usage_error(rc, capsys.readouterr().err)
