"""``transforms.accounting``: the stages' declarations, added up, and the words rendered from metrics."""

from __future__ import annotations

import pytest

from transforms.accounting import RECORDS_CHECK, Accounting, Check, Output, combine, render
from transforms.quotes.stage import ComputeMidPrices, NormalizeQuotes
from transforms.sources.stage import ReplayHistorical
from transforms.trades.stage import AnalyseTrades
from transforms.windows.logic import WindowConfig, parse_window
from transforms.windows.stage import WindowQuotes


def test_stages_add_up_to_the_default_jobs_files_and_balance_in_their_order():
    summed = ComputeMidPrices.ACCOUNTING + NormalizeQuotes.ACCOUNTING + ReplayHistorical.DEDUP_ACCOUNTING
    assert summed.metric_names == {"mid_prices.log": "mid_prices", "errors.log": "latency_filtered",
                                   "dead_letter.jsonl": "dead_lettered"}
    assert summed.balances == {RECORDS_CHECK: ["mid_prices", "latency_filtered", "dead_lettered", "duplicates"]}
    assert summed.totals == {} and summed.labels == {RECORDS_CHECK: "mid-price counts"}
    assert summed.set_aside == ("latency_filtered", "dead_lettered", "duplicates")
    assert summed.tally_names["errors.log"] == "latency_filtered_by_reason"


def test_the_window_stage_balances_what_its_accumulation_counts():
    for accumulation, in_panes in (("discarding", "quotes_in_panes"), ("accumulating", "windowed_quotes")):
        accounting = WindowQuotes.accounting_for(accumulation)
        assert WindowQuotes(WindowConfig(parse_window("fixed:1s"), accumulation=accumulation), 8).accounting == accounting
        assert accounting.balances == {"windows_balanced": [in_panes, "late_dropped", "dead_lettered"]}
        assert accounting.tally_names == {"windows.jsonl": "panes_by_timing", "late.jsonl": "late_dropped_by_reason"}


def test_trade_checks_have_their_own_totals_and_scores_only_with_a_model():
    assert AnalyseTrades.accounting_for(scored=False).totals == {"trades_balanced": "trades_in"}
    scored = AnalyseTrades.accounting_for(scored=True)
    assert scored.totals == {"trades_balanced": "trades_in", "scores_balanced": "feature_windows"}
    assert scored.tally_names["scores.jsonl"] == "scores_by_flag"


def test_two_stages_cannot_declare_one_file_or_disagree_about_a_check():
    one = Accounting(outputs=(Output("a.log", "a", "a", ""),))
    with pytest.raises(ValueError, match="two stages write a.log"):
        one + Accounting(outputs=(Output("a.log", "b", "b", ""),))
    owner = Accounting(checks=(Check("c", ("x",), total="t1", label="c counts"),))
    with pytest.raises(ValueError, match="check c: total"):
        owner + Accounting(checks=(Check("c", ("y",), total="t2"),))
    joined = combine([owner, Accounting(checks=(Check("c", ("y",)),))])
    assert joined.checks == (Check("c", ("x", "y"), total="t1", label="c counts"),)


def test_render_fills_counts_tallies_lists_and_missing_counts():
    metrics = {"windows_emitted": 1234, "panes_by_timing": {"ON_TIME": 3, "LATE": 1}, "windowing": {"window": "fixed:1s"},
               "trade_inputs": ["a.csv", "b.csv"]}
    assert render("{windows_emitted:,} panes ({panes_by_timing:tally}), {windowing[window]}", metrics) == \
        "1,234 panes (3 ON_TIME, 1 LATE), fixed:1s"
    assert render("{trade_inputs:len} file(s)", metrics) == "2 file(s)"
    assert render("{scores_by_flag[anomalies]:,} flagged, {nothing:tally}", metrics) == "0 flagged, none"
