"""Paging cost when decoding: `bench_paging.py --mode decode`, a script of its own for `make bench`.

One new token per sequence per step, the n-gram context carried by the streaming hasher, rows
paged per step with no prefetch; paged vs resident new tokens/s. Arguments pass through:

    python benchmarks/bench_paging_decode.py [--device auto|cpu|cuda] [--batches 12] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_paging import main  # noqa: E402

if __name__ == "__main__":
    main(["--mode", "decode", *sys.argv[1:]])
