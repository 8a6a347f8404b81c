"""scripts/check_sm90_fp8.py runs each of --parts in its own process: the part's options go with it (CPU)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import check_sm90_fp8 as c  # noqa: E402


def test_parts_carry_their_options(monkeypatch, tmp_path):
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(c.subprocess, "run", lambda cmd, timeout: calls.append(cmd) or Done())
    monkeypatch.setattr(sys, "argv", ["check_sm90_fp8.py", "--parts", "basetime,ncu", "--out", str(tmp_path),
                                      "--hds", "128", "--seqs", "4096", "--ncu-seq", "1024", "--causal",
                                      "--alt-lib", "x=/lib.so"])
    c.main()
    assert len(calls) == 2
    for cmd, part in zip(calls, ("basetime", "ncu")):
        opts = cmd[2:]
        assert opts[opts.index("--part") + 1] == part
        assert opts[opts.index("--hds") + 1] == "128" and opts[opts.index("--seqs") + 1] == "4096"
        assert opts[opts.index("--ncu-seq") + 1] == "1024" and "--causal" in opts
        assert "--alt-lib=x=/lib.so" in opts
