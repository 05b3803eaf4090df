"""``generate --counts``: decoding from the mix, and what scoring the prompt for the gate costs.

A gate that reads ``recent_gain`` (``fit-gate``'s default) starts it from the prompt: the model's
scores of the prompt's tokens (the first step's forward pass over the prompt, or eval's windows
of a prompt longer than the model's window) and the count memory's (one ``score_stream``). The
cases, each in a fresh subprocess (its peak RSS is its own), best of ``--repeats``:

- ``plain``: ``generate`` without counts;
- ``mix``: ``--counts --mix 0.3`` (a constant λ: nothing of the prompt is scored);
- ``gate``: ``--counts`` with the fitted ``recent`` gate (the prompt scored);

for a prompt within the window (~100 tokens, window 128) and one of ~12 windows (past
``recent_gain``'s horizon of 1,026 tokens), 1 and 32 generated tokens (greedy, resident rows,
one torch thread: this machine is shared). ``seconds`` is ``GenerateReport.seconds``: the decode
loop, whose first step runs the prompt's forward pass (and, for ``gate``, scores the prompt).
The figure to read is ``gate`` against ``mix`` at 1 token (the prompt's scoring against the
first step without it) and at 32 (its share of a generation).

Usage: ``python benchmarks/bench_mix_decode.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import peak_rss_mib, run_json_case

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "corpus"
MODES = ("plain", "mix", "gate")
STEPS = (1, 32)


def prompt_text(long: bool) -> str:
    """~100 tokens of held-out text, or ~1,500 (about 12 windows of 128; past the horizon)."""
    docs = [json.loads(line)["text"] for line in (SAMPLE / "heldout.jsonl").open()]
    return "\n".join(docs)[: 6000 if long else 400]


def case(workdir: Path, mode: str, long: bool, steps: int) -> dict:
    import torch

    from engramctl.model.serve.generate import generate
    from engramctl.model.serve.mixing import CountsSpec
    from engramctl.model.serve.opening import ModelSpec
    from engramctl.table.sources.table import open_table

    torch.set_num_threads(1)
    counts = {"plain": None, "mix": CountsSpec(workdir / "c.zarr", 0.3),
              "gate": CountsSpec(workdir / "c.zarr")}[mode]  # fmt: skip
    with open_table(workdir / "t.zarr") as table:
        spec = ModelSpec(workdir / "m", table, "cpu", resident=True)
        report = generate(model=spec, prompt=prompt_text(long), max_tokens=steps,
                          stop_at_eos=False, counts=counts)  # fmt: skip
    assert len(report.tokens) == steps, report
    return {"seconds": report.seconds, "prompt_tokens": report.prompt_tokens,
            "tokens": len(report.tokens), "counts": report.counts,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "engramctl", *map(str, args)], check=True,
                   capture_output=True, cwd=REPO)  # fmt: skip


def prepare(workdir: Path) -> None:
    from engramctl import CanonicalVocab

    vocab = workdir / "vocab.parquet"
    CanonicalVocab.from_tokenizer("deepseek-v4").save(vocab)
    layout = ["--ngram-vocab", "10007,10007", "--max-ngram", "3", "--heads", "2", "--layers", "1"]
    cli("init-table", workdir / "t.zarr", "--vocab", vocab, "--dim", 16, *layout)
    cli("train", "--corpus", SAMPLE / "train.jsonl", "--heldout", SAMPLE / "heldout.jsonl",
        "--out", workdir / "m", "--table", workdir / "t.zarr", "--vocab", vocab, "--steps", 20,
        "--depth", 2, "--width", 64, "--attn-heads", 2, "--seq-len", 128, "--batch", 8,
        "--device", "cpu")  # fmt: skip
    cli("build-counts", SAMPLE / "train.jsonl", "--vocab", vocab, "--like", workdir / "t.zarr",
        "--out", workdir / "c.zarr")  # fmt: skip
    cli("fit-gate", workdir / "c.zarr", "--model", workdir / "m", "--table", workdir / "t.zarr",
        "--benchmark", SAMPLE / "heldout.jsonl", "--device", "cpu")  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--long", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # one case in this fresh process: print its JSON
        result = case(Path(args.workdir), args.case, args.long, args.steps)
        print(json.dumps(result))
        return result
    script = str(Path(__file__).resolve())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir)
        base = ("--workdir", str(workdir))
        run_json_case(script, "--case", "gate", *base)  # warm-up: numba cache, page cache
        for long in (False, True):
            for steps in STEPS:
                runs = {mode: [] for mode in MODES}
                for _ in range(args.repeats):
                    for mode in MODES:  # interleaved
                        extra = ("--long",) if long else ()
                        runs[mode].append(run_json_case(script, "--case", mode, *base, *extra,
                                                        "--steps", str(steps)))  # fmt: skip
                best = {mode: min(r, key=lambda x: x["seconds"]) for mode, r in runs.items()}
                results[(long, steps)] = best
                n = best["plain"]["prompt_tokens"]
                print(f"prompt {n} tokens (window 128), {steps} generated, best of "
                      f"{args.repeats}:")  # fmt: skip
                for mode, r in best.items():
                    lam = (
                        "" if r["counts"] is None else f"  mean λ {r['counts']['mean_lambda']:.3f}"
                    )
                    print(f"  {mode:5s} {r['seconds'] * 1000:8.1f} ms  peak RSS "
                          f"{r['peak_rss_mib']:5.0f} MiB{lam}")  # fmt: skip
                gate, mix = best["gate"]["seconds"], best["mix"]["seconds"]
                print(f"  gate / mix: {gate / mix:.2f}x (the prompt's scoring: "
                      f"{(gate - mix) * 1000:+.1f} ms); mix / plain: "
                      f"{mix / best['plain']['seconds']:.2f}x")  # fmt: skip
    return {f"{'long' if k[0] else 'short'}-{k[1]}": v for k, v in results.items()}


if __name__ == "__main__":
    main()
