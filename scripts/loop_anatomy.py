"""The key loop of a kernel: how two builds' SASS differ there, its opcode counts beside another kernel's
(FA3's), and where ncu's warp samples fall.

    python scripts/loop_anatomy.py sass BASE.so CAND.so [--filter REGEX] [--diff]
    python scripts/loop_anatomy.py mix LIB [LIB ...] [--kernel REGEX]
    python scripts/loop_anatomy.py ncu OURS.csv [FA3.csv]

The key loop is the innermost loop whose body issues GEMMs (a backward branch enclosing HGMMA).
- sass: per fwd_kernel present in both libraries (cuobjdump -sass; the cuda-cuobjdump wheel puts it on
  PATH), whether the key loops are identical after register names and constants are masked, else
  their similarity and, per build, the loop's shape: its GEMM issues, waits, shuffles and exp2 runs in
  order. Candidates whose loop changed must be timed; ptxas moves this loop for unrelated edits
  (bench/NOTES.md runs 82, 85-87, 125-127).
- mix: per kernel whose mangled name matches --kernel (any function: the backward's bwd_kernel, or
  FA3's kernels in a cubin taken out of its wheel with `cuobjdump -xelf`), the loops that issue GEMMs
  and the innermost one's opcode counts and shape. Reading ours beside FA3's this way found the
  backward's dS store addresses rebuilt at every block (bench/NOTES-bwd.md runs 133-135).
- ncu: from `check_sm90.py --part ncu`'s per-instruction CSV (ncu --page source --csv): warp samples
  and executed instructions per loop iteration against the rest of the kernel, the opcode mix per
  iteration, and the loop's wait sites; with a second CSV (FA3's), side by side.
"""
import argparse
import collections
import csv
import difflib
import re
import subprocess
import sys

SHAPE_OPS = r"[HQ]GMMA|WARPGROUP\.DEPBAR|BAR\.SYNC|BAR\.ARV|SYNCS|SHFL|MUFU\.EX2"


def gemm_loops(code):
    """[(first, last, GEMMs)] of every backward-branch span that contains a GEMM, shortest first."""
    at = {a: i for i, (a, _) in enumerate(code)}
    spans = []
    for i, (a, text) in enumerate(code):
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in at:
            first = at[int(m.group(1), 16)]
            n = sum("GMMA" in t for _, t in code[first:i + 1])
            if n:
                spans.append((first, i, n))
    return sorted(spans, key=lambda s: s[1] - s[0])


def innermost_gemm_loop(code):
    """(first, last) index of the shortest backward-branch span that contains a GEMM; code: [(addr, text)]."""
    loops = gemm_loops(code)
    if not loops:
        raise SystemExit("no loop with a GEMM found")
    return loops[0][:2]


def masked(text):
    """An instruction with registers, predicates and constants masked, for comparing schedules."""
    return re.sub(r"0x[0-9a-f]+", "X", re.sub(r"\bU?R\d+|\bU?P\d", "r", text))


def opcode(text):
    """The instruction's opcode with its modifiers, without a guard predicate: '@!P0 BRA 0x..' -> 'BRA'."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def shape(body):
    """The loop's landmarks in order, runs of one kind collapsed: HGMMA.QKx8 DEPBAR... MUFU.EX2x33 ..."""
    def landmark(text):
        m = re.search(r"\b([HQ]GMMA)\.\S+ R\d+, (R\d+)?", text)
        if m:   # P V takes its A operand (P) from registers; Q K^T both from shared memory (16-bit and e4m3)
            return m.group(1) + (".PV" if m.group(2) else ".QK")
        if "DEPBAR" in text:
            return text.replace("WARPGROUP.", "")                  # keeps the wait's group count
        return opcode(text)

    out = []
    for text in body:
        if not re.search(SHAPE_OPS, text):
            continue
        mark = landmark(text)
        if out and out[-1][0] == mark:
            out[-1][1] += 1
        else:
            out.append([mark, 1])
    return "  ".join(f"{k}x{n}" if n > 1 else k for k, n in out)


def sass_functions(lib, name=r"fwd_kernel"):
    """{mangled name: [(addr, text)]} of the functions whose name matches `name`, from cuobjdump -sass
    (a library, or a cubin such as one that `cuobjdump -xelf` took out of a wheel's extension)."""
    text = subprocess.run(["cuobjdump", "-sass", lib], capture_output=True, text=True, check=True).stdout
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = m.group(1) if re.search(name, m.group(1)) else None
            if cur:
                funcs[cur] = []
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if cur and m:
            funcs[cur].append((int(m.group(1), 16), m.group(2)))
    return funcs


def sass_counts(lib, name, patterns):
    """{mangled name: {key: instructions matching its regex, ..., "instructions": all}} per function whose
    name matches `name`: the SASS facts that check_sm90.py and check_sm90_bwd.py record (--part sass)."""
    return {fn: dict({k: sum(bool(re.search(p, t)) for _, t in code) for k, p in patterns.items()}, instructions=len(code))
            for fn, code in sass_functions(lib, name).items()}


def kernel_label(mangled):
    """'bf16 d128 m128 n176 s2 varlen0 merge0 cluster2' from FwdTraits<T, d, m, n, stages, varlen, merge, cluster>."""
    dtype = next((short for long, short in (("bfloat16", "bf16"), ("half", "fp16"), ("e4m3", "e4m3")) if long in mangled), "?")
    values = re.findall(r"L[ib](\d+)E", mangled.split("FwdTraits", 1)[-1])
    if len(values) != 7:
        return mangled
    return dtype + " " + " ".join(f"{k}{v}" for k, v in zip(("d", "m", "n", "s", "varlen", "merge", "cluster"), values))


def cmd_sass(args):
    a, b = sass_functions(args.base), sass_functions(args.cand)
    for name in sorted(set(a) & set(b)):
        label = kernel_label(name)
        if args.filter and not re.search(args.filter, label):
            continue
        loops = []
        for code in (a[name], b[name]):
            first, last = innermost_gemm_loop(code)
            loops.append([t for _, t in code[first:last + 1]])
        ma, mb = ([masked(t) for t in body] for body in loops)
        if ma == mb:
            print(f"{label}: key loop identical ({len(ma)} instructions)")
            continue
        sm = difflib.SequenceMatcher(None, ma, mb, autojunk=False)
        print(f"{label}: key loop {len(ma)} -> {len(mb)} instructions, similarity {sm.ratio():.3f}")
        print(f"  base: {shape(loops[0])}\n  cand: {shape(loops[1])}")
        if args.diff:
            for op, i1, i2, j1, j2 in sm.get_opcodes():
                if op != "equal":
                    print(f"    {op} {i1}:{i2} -> {j1}:{j2}  {ma[i1:i2][:3]} -> {mb[j1:j2][:3]}")


def cmd_mix(args):
    """Per matching kernel of each library: its GEMM loops, and the innermost one's opcode counts."""
    for lib in args.lib:
        for name, code in sorted(sass_functions(lib, args.kernel).items()):
            loops = gemm_loops(code)
            if not loops:
                continue
            first, last, _ = loops[0]
            mix = collections.Counter(opcode(t).split(".")[0] for _, t in code[first:last + 1])
            print(f"{lib}: {name[:args.width]}")
            print("  GEMM loops (instructions, GEMMs): " + ", ".join(f"{b - a + 1} ({n})" for a, b, n in loops))
            print("  innermost: " + " ".join(f"{op} {k}" for op, k in mix.most_common(args.top)))
            print("  shape: " + shape([t for _, t in code[first:last + 1]]))


def ncu_rows(path):
    """[(addr, text, warp samples, instructions executed)] of ncu's source-page CSV."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = rows[1]
    col = {k: head.index(k) for k in ("Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed")}
    out = []
    for r in rows[2:]:
        try:
            out.append((int(r[col["Address"]], 16), r[col["Source"]].strip(),
                        int(r[col["Warp Stall Sampling (All Samples)"]] or 0), int(r[col["Instructions Executed"]] or 0)))
        except (ValueError, IndexError):
            continue
    return out


def ncu_summary(path):
    """Per key-loop iteration: samples, instructions, opcode mix and wait sites; and the kernel's totals."""
    rows = ncu_rows(path)
    first, last = innermost_gemm_loop([(a, t) for a, t, _, _ in rows])
    loop = rows[first:last + 1]
    iters = rows[last][3]   # warp executions of the back branch: one per warp and iteration
    total = sum(r[2] for r in rows)
    in_loop = sum(r[2] for r in loop)
    mix, samples = collections.Counter(), collections.Counter()
    for _, text, smp, ex in loop:
        op = opcode(text).split(".")[0]
        mix[op] += ex / iters
        samples[op] += smp / iters
    waits = [(smp / iters, text) for _, text, smp, _ in loop if re.search(r"DEPBAR|SYNCS|BAR\.|BRA", text)]
    return dict(iters=iters, total=total, in_loop=in_loop, static=len(loop), mix=mix, samples=samples, waits=waits,
                inst=sum(r[3] for r in loop) / iters)


def cmd_ncu(args):
    sums = [ncu_summary(p) for p in args.csv]
    for p, s in zip(args.csv, sums):
        print(f"{p}: {s['iters']} warp iterations; samples {s['total']} ({s['in_loop'] / s['total']:.1%} in the loop), "
              f"{s['in_loop'] / s['iters']:.4f} per warp iteration, {(s['total'] - s['in_loop'])} outside; "
              f"loop {s['static']} instructions, {s['inst']:.1f} executed per iteration")
    ops = sorted(set().union(*(s["mix"] for s in sums)), key=lambda k: -max(s["samples"][k] for s in sums))
    print(f"\n{'opcode':12s}" + "".join(f"{'inst/it':>9s}{'smp/it':>8s}" for _ in sums))
    for op in ops[:args.top]:
        print(f"{op:12s}" + "".join(f"{s['mix'][op]:9.1f}{s['samples'][op]:8.4f}" for s in sums))
    for p, s in zip(args.csv, sums):
        print(f"\nwait sites in the loop, samples per warp iteration: {p}")
        for smp, text in s["waits"]:
            print(f"  {smp:.4f}  {text[:70]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sass", help="compare two builds' key loops")
    s.add_argument("base")
    s.add_argument("cand")
    s.add_argument("--filter", help="regex on the kernel's label (e.g. 'n176')")
    s.add_argument("--diff", action="store_true", help="print the differing runs")
    x = sub.add_parser("mix", help="opcode counts of any kernel's innermost GEMM loop (ours or a wheel's)")
    x.add_argument("lib", nargs="+")
    x.add_argument("--kernel", default="fwd_kernel", help="regex on the mangled function name")
    x.add_argument("--top", type=int, default=30, help="opcodes shown")
    x.add_argument("--width", type=int, default=160, help="characters of the name shown")
    n = sub.add_parser("ncu", help="samples and instructions per key-loop iteration")
    n.add_argument("csv", nargs="+")
    n.add_argument("--top", type=int, default=20, help="opcodes shown, by samples")
    args = ap.parse_args()
    dict(sass=cmd_sass, mix=cmd_mix, ncu=cmd_ncu)[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
