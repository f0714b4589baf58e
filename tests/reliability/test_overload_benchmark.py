"""benchmarks/overload.py at ~2 s per load level: it runs end to end against the real server, and
every request it sends gets a definite answer; refusals of a full queue say when to retry."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, overload

pytestmark = pytest.mark.reliability


def test_the_overload_benchmark_runs_and_accounts_for_every_request(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    figures = overload.main(["--duration", "2", "--calibrate", "2", "--batches", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["levels"].keys() == {"1x", "3x", "10x"}
    assert json.loads((tmp_path / "overload.json").read_text())["benchmark"] == "overload"
    for name, row in figures["levels"].items():
        answered = row["accepted"] + row["refused_429"] + row["refused_503"] + row["slo_rejected"]
        assert row["other"] == 0 and answered == row["sent"] > 0, (name, row)
        assert row["failed_or_cancelled"] == 0, (name, row)
        if row["refused_429"] + row["refused_503"]:
            assert row["share_429_503_with_retry_after"] == 1.0, (name, row)
        assert row["healthz_s_max"] is not None
