"""The ctypes mirrors in ringfa3/ops/sm90.py against the C headers they mirror: the same fields, in the
same order, with the same types. A drift would pass wrong arguments to a kernel without any error, so
it is caught here, on the CPU, before the library is built or loaded."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from ringfa3.ops import sm90

CSRC = Path(__file__).resolve().parents[1] / "csrc"
C_TYPES = {"int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64, "float": ctypes.c_float}


def header_fields(header: str, struct: str) -> list:
    """(name, ctypes type) of each field of `typedef struct struct {...}` in csrc/header; every pointer
    is a c_void_p, `T x[n]` is T * n."""
    text = (CSRC / header).read_text()
    body = re.search(rf"typedef struct {struct} \{{(.*?)\}}", text, re.DOTALL).group(1)
    fields = []
    for line in body.splitlines():
        decl = line.split("//")[0].strip().rstrip(";").removeprefix("const ")
        if not decl:
            continue
        ctype, names = decl.split(None, 1)
        for name in names.split(","):
            name = name.strip()
            pointer = ctype.endswith("*") or name.startswith("*")
            base = ctypes.c_void_p if pointer else C_TYPES[ctype]
            count = re.search(r"\[(\d+)\]", name)
            fields.append((name.strip("* ").split("[")[0], base * int(count.group(1)) if count else base))
    return fields


@pytest.mark.parametrize("header, struct, mirror", [
    ("fwd_args.h", "RingFa3FwdArgs", sm90._FwdArgs),
    ("bwd/bwd_args.h", "RingFa3BwdArgs", sm90._BwdArgs),
    ("fp8_prep_args.h", "RingFa3Fp8RowsArgs", sm90._Fp8RowsArgs),
    ("fp8_prep_args.h", "RingFa3Fp8VArgs", sm90._Fp8VArgs),
])
def test_ctypes_mirror_follows_the_header(header, struct, mirror):
    want = header_fields(header, struct)
    got = list(mirror._fields_)
    assert [n for n, _ in got] == [n for n, _ in want]
    for (name, g), (_, w) in zip(got, want):
        assert ctypes.sizeof(g) == ctypes.sizeof(w) and getattr(g, "_type_", g) == getattr(w, "_type_", w), name
