"""scripts/loop_anatomy.py on made-up listings: the key loop is the innermost backward branch around a GEMM,
two schedules compare equal up to register names, and ncu's samples divide by the loop's iterations."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import loop_anatomy as la  # noqa: E402

# An outer tile loop (0x10-0x90) around a key loop (0x30-0x70); a backward branch without a GEMM (0xa0-0xb0).
LISTING = [
    (0x00, "MOV R1, c[0x0][0x28]"),
    (0x10, "BAR.SYNC.DEFER_BLOCKING 0x1, 0x100"),
    (0x20, "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4+0x30010], R7"),
    (0x30, "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT"),
    (0x40, "HGMMA.64x128x16.F32.BF16 R88, R152, gdesc[UR16].tnspB, R88"),
    (0x50, "SHFL.BFLY PT, R3, R2, 0x1, 0x1f"),
    (0x60, "MUFU.EX2 R5, R4"),
    (0x70, "@P0 BRA 0x30"),
    (0x80, "WARPGROUP.DEPBAR.LE gsb0, 0x0"),
    (0x90, "@P1 BRA 0x10"),
    (0xa0, "IADD3 R2, R2, 0x1, RZ"),
    (0xb0, "@P2 BRA 0xa0"),
]


def test_innermost_gemm_loop_takes_the_key_loop():
    assert la.innermost_gemm_loop(LISTING) == (3, 7)


def test_gemm_loops_lists_the_spans_with_gemms_shortest_first():
    assert la.gemm_loops(LISTING) == [(3, 7, 2), (1, 9, 2)]


def test_mix_counts_the_innermost_loop_of_any_named_kernel(monkeypatch, capsys):
    monkeypatch.setattr(la, "sass_functions", lambda lib, name: {"bwd_kernel_x": LISTING} if name == "bwd" else {})
    la.cmd_mix(type("Args", (), dict(lib=["lib.so"], kernel="bwd", top=3, width=40))())
    out = capsys.readouterr().out
    assert "GEMM loops (instructions, GEMMs): 5 (2), 9 (2)" in out
    assert "innermost: HGMMA 2 SHFL 1 MUFU 1" in out
    assert "shape: HGMMA.QK  HGMMA.PV  SHFL.BFLY  MUFU.EX2" in out


def test_sass_counts_counts_matching_instructions(monkeypatch):
    monkeypatch.setattr(la, "sass_functions", lambda lib, name: {"bwd_kernel_x": LISTING})
    counts = la.sass_counts("lib.so", "bwd", dict(hgmma=r"\bHGMMA\b", bra=r"\bBRA\b"))
    assert counts == {"bwd_kernel_x": dict(hgmma=2, bra=3, instructions=len(LISTING))}


def test_masked_ignores_registers_and_constants():
    a = la.masked("FFMA R12, R13, R14, -R15")
    assert a == la.masked("FFMA R40, R41, R2, -R9")
    assert a != la.masked("FMUL R12, R13, R14")
    assert la.masked("@!P3 BRA 0x7f10") == la.masked("@!P0 BRA 0x1234")


def test_shape_collapses_runs_in_order():
    body = [t for _, t in LISTING[1:8]] + ["MUFU.EX2 R6, R5", "MUFU.EX2 R7, R6"]
    assert la.shape(body) == ("BAR.SYNC.DEFER_BLOCKING  SYNCS.PHASECHK.TRANS64.TRYWAIT  HGMMA.QK  HGMMA.PV  "
                              "SHFL.BFLY  MUFU.EX2x3")


def test_shape_tells_e4m3_gemms_apart_by_their_a_operand():
    body = ["QGMMA.64x224x32.F32.E4M3.E4M3 R24, gdesc[UR20], RZ, !UPT",
            "QGMMA.64x128x32.F32.E4M3.E4M3 R136, R200, gdesc[UR20], R136", "MUFU.EX2 R5, R4"]
    assert la.shape(body) == "QGMMA.QK  QGMMA.PV  MUFU.EX2"


def test_kernel_label_reads_the_traits():
    mangled = "_ZN7ringfa310fwd_kernelINS_9FwdTraitsIN7cutlass10bfloat16_tELi128ELi128ELi176ELi2ELb0ELb1ELi2EEEEEvNS_9FwdParamsIT_EE"
    assert la.kernel_label(mangled) == "bf16 d128 m128 n176 s2 varlen0 merge1 cluster2"


def test_ncu_summary_per_iteration(tmp_path):
    path = tmp_path / "source.csv"
    head = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed"]
    # 8 warps x 10 iterations of the key loop; samples 2 per instruction inside, 5 outside.
    rows = [(a, t, 2 if 0x30 <= a <= 0x70 else 5, 80 if 0x30 <= a <= 0x70 else 8) for a, t in LISTING]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Kernel Name", "fwd_kernel"])
        w.writerow(head)
        for a, t, smp, ex in rows:
            w.writerow([hex(a), "      " + t, smp, ex])
    s = la.ncu_summary(str(path))
    assert s["iters"] == 80 and s["static"] == 5
    assert s["in_loop"] == 10 and s["total"] == 10 + 5 * 7
    assert s["inst"] == 5.0
    assert s["mix"]["HGMMA"] == 2.0 and s["mix"]["MUFU"] == 1.0
    assert [t for _, t in s["waits"]] == ["@P0 BRA 0x30"]
