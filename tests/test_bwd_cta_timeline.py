"""scripts/bwd_cta_timeline.py's summary of a per-CTA trace (CPU: synthetic rows)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bwd_cta_timeline as tl  # noqa: E402


def test_summary_of_two_sms():
    # (sm, start, kv landed, loop end, end): SM 0 runs two CTAs with a gap of 10, SM 1 one CTA.
    rows = [(0, 0, 20, 920, 1000), (0, 1010, 1030, 1930, 2010), (1, 5, 25, 925, 1005), (0, 0, 0, 0, 0)]
    s = tl.summarize(rows)
    assert s["ctas"] == 3 and s["sms"] == 2
    assert (s["prologue"], s["loop"], s["epilogue"], s["gap"]) == (20, 900, 80, 10)
    assert s["prologue_share"] == pytest.approx(60 / 3000, abs=1e-4)
    assert s["epilogue_share"] == pytest.approx(240 / 3000, abs=1e-4)
    assert s["idle_share"] == pytest.approx(1 - 3000 / 3010, abs=1e-4)   # spans 2010 + 1000
    assert s["tail_share"] == pytest.approx(1 - 3010 / (2 * 2010), abs=1e-4)   # SM 1 idle after 1000 of 2010
    assert s["ctas_per_sm"] == (1, 2)


def test_untraced_library_is_named():
    with pytest.raises(SystemExit, match="RINGFA3_BWD_TRACE"):
        tl.summarize([(0, 0, 0, 0, 0)])
