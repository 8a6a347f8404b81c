"""scripts/cta_timeline.py's summary of a per-unit trace (CPU: synthetic rows)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import cta_timeline as tl  # noqa: E402


def test_summary_of_two_sms():
    # (sm, start, landed, loop end, end): SM 0 runs two units with a gap of 10, SM 1 one unit.
    rows = [(0, 0, 20, 920, 1000), (0, 1010, 1030, 1930, 2010), (1, 5, 25, 925, 1005), (0, 0, 0, 0, 0)]
    s = tl.summarize(rows)
    assert s["units"] == 3 and s["sms"] == 2
    assert (s["prologue"], s["loop"], s["epilogue"], s["gap"]) == (20, 900, 80, 10)
    assert s["prologue_share"] == pytest.approx(60 / 3000, abs=1e-4)
    assert s["epilogue_share"] == pytest.approx(240 / 3000, abs=1e-4)
    assert s["idle_share"] == pytest.approx(1 - 3000 / 3010, abs=1e-4)   # spans 2010 + 1000
    assert s["tail_share"] == pytest.approx(1 - 3010 / (2 * 2010), abs=1e-4)   # SM 1 idle after 1000 of 2010
    assert s["units_per_sm"] == (1, 2)


def test_global_times_give_late_starts_and_early_finishes():
    # SM 1 starts 10 ns late and finishes 40 ns early in a kernel spanning 100 ns.
    rows = [(0, 0, 1, 2, 3, 1000, 1100), (1, 0, 1, 2, 3, 1010, 1060)]
    s = tl.summarize(rows)
    assert s["span_us"] == 0.1
    assert s["late_start"] == pytest.approx(5 / 100) and s["early_finish"] == pytest.approx(20 / 100)


def test_untraced_library_is_named():
    with pytest.raises(SystemExit, match="RINGFA3_TRACE"):
        tl.summarize([(0, 0, 0, 0, 0)])
