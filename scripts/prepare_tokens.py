"""Tokenize local text files into the memory-mapped shards that `data=tokens` reads.

    python scripts/prepare_tokens.py --out data/mytext FILE [FILE ...] [--tokenizer bytes|PATH] [--val 0.05]

Writes OUT/train.bin and OUT/val.bin (uint16 when the vocabulary fits, else uint32) and OUT/meta.json.
--tokenizer bytes (default) maps UTF-8 bytes to ids 0..255 (vocab 256, no downloads); a PATH is a local
Hugging Face tokenizer folder (transformers, local_files_only). Each file ends with the EOS id.
Then: python -m ringfa3.train data=tokens data.path=data/mytext model.vocab_size=<vocab_size>
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


def _tokenizer(name: str):
    """(encode(text) -> list[int], eos_id, vocab_size)."""
    if name == "bytes":
        return (lambda text: list(text.encode("utf-8"))), 0, 256
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    return (lambda text: tok.encode(text, add_special_tokens=False)), eos, len(tok)


def prepare(files: list[str], out: str, tokenizer: str = "bytes", val_fraction: float = 0.05) -> dict:
    encode, eos, vocab = _tokenizer(tokenizer)
    ids: list[int] = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            ids.extend(encode(f.read()))
        ids.append(eos)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    arr = np.asarray(ids, dtype=dtype)
    n_val = int(len(arr) * val_fraction)
    os.makedirs(out, exist_ok=True)
    arr[: len(arr) - n_val].tofile(os.path.join(out, "train.bin"))
    arr[len(arr) - n_val:].tofile(os.path.join(out, "val.bin"))
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": vocab, "tokenizer": tokenizer,
            "train_tokens": int(len(arr) - n_val), "val_tokens": n_val}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="local text files")
    ap.add_argument("--out", required=True, help="output folder (data.path)")
    ap.add_argument("--tokenizer", default="bytes", help="'bytes' or a local Hugging Face tokenizer folder")
    ap.add_argument("--val", type=float, default=0.05, help="fraction of tokens held out for eval")
    a = ap.parse_args()
    meta = prepare(a.files, a.out, a.tokenizer, a.val)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
