"""Run every ``benchmarks/bench_*.py`` in turn and print its output (``make bench``).

Each benchmark is its own process (so one cannot disturb another's memory or threads) run with
this interpreter; the exit status is non-zero if any of them failed. Extra arguments select
benchmarks by name: ``python benchmarks/run_all.py hashing`` runs ``bench_hashing.py`` only.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    wanted = argv if argv is not None else sys.argv[1:]
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if any(w in s.stem for w in wanted)]
    if not scripts:
        print(f"no benchmarks matched {wanted or 'bench_*.py'} in {HERE}")
        return 1
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        seconds = time.perf_counter() - started
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"== {script.name}: {status} in {seconds:.1f}s\n", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"{len(failed)} of {len(scripts)} benchmarks failed: {', '.join(failed)}")
        return 1
    print(f"all {len(scripts)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
