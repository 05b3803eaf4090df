"""``edit --learn``: write 8 facts into a trained model's memory; which took, what else moved.

The model: the demo's reference model (``make demo``: a 20k-row-per-head table of 2 orders x 4
heads, dim 32, one Engram layer; a 4 x 128 model trained on ``sample_data/corpus/train.jsonl``),
trained here for ``--train-steps`` steps (300 in the demo) unless ``--model DIR --table T`` give
one (the table is copied, never written). Then eight sentences that are not in the training
corpus (made of words the model predicts) are written one after the other, each with
:func:`engramctl.model.learn.learn_fact` (its own commit), and the benchmark reports:

- per fact: steps, rows written, the fact's loss before and after, whether greedy decoding from
  its first token reproduces it before and after, and the wall time of the write;
- after all eight: how many the model still continues, checked independently through
  ``engramctl generate``'s decoder (:func:`engramctl.model.serve.generate.generate`, greedy,
  rows paged from the table with its commits), since a later fact's rows can collide with an
  earlier one's;
- the held-out loss of ``sample_data/bench/lm_heldout.jsonl`` (``eval --benchmark``) before the
  first write and after the last, and ``revert`` to the trained table's commit giving it back;
- peak RSS.

    python benchmarks/bench_learn.py [--train-steps 300] [--steps 100] [--lr 0.05]
        [--workdir DIR] [--model DIR --table T] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FACTS = (
    "The assert statement is a convenient way to raise a number.",
    "A class is a function that returns the first line of the module.",
    "The import statement is used to convert a list into a string.",
    "The default value of an object is the name of the file.",
    "An exception is raised when the loop is called with no arguments.",
    "The return statement is used to define a new variable.",
    "A tuple is a list of strings that can be modified by the user.",
    "The operator is evaluated after the code of the function.",
)


def train_model(workdir: Path, steps: int) -> tuple[Path, Path]:
    """The demo's Engram reference model, trained for ``steps`` (returns model dir, table)."""
    from typer.testing import CliRunner

    from engramctl import CanonicalVocab
    from engramctl.cli import app

    vocab = workdir / "vocab.parquet"
    CanonicalVocab.from_tokenizer("deepseek-v4").save(vocab)
    table, model = workdir / "engram.zarr", workdir / "model"

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        if result.exit_code != 0:
            raise SystemExit(result.output)

    run("init-table", table, "--vocab", vocab, "--ngram-vocab", "20000,20000", "--max-ngram", 3,
        "--heads", 4, "--layers", 1, "--pad-id", 2, "--dim", 32, "--dtype", "float32",
        "--init", "normal", "--std", "0.02", "--overwrite")  # fmt: skip
    run("train", "--corpus", REPO / "sample_data/corpus/train.jsonl", "--table", table,
        "--vocab", vocab, "--out", model, "--steps", steps, "--seed", 0, "--device", "cpu",
        "--eval-every", 0, "--overwrite")  # fmt: skip
    return model, table


def greedy_continues(model: Path, table: Path, fact: str) -> bool:
    """Whether ``generate`` (greedy, from the fact's first token) reproduces the fact."""
    from engramctl.model.checkpoint import load_checkpoint
    from engramctl.model.serve.generate import generate
    from engramctl.model.serve.opening import ModelSpec, load_model_tokenizer
    from engramctl.table.sources.table import open_table

    tokenizer = load_model_tokenizer(load_checkpoint(model), None)
    ids = tokenizer.encode(fact, add_special_tokens=False).ids
    prompt = tokenizer.decode(ids[:1], skip_special_tokens=False)
    with open_table(table) as opened:
        report = generate(model=ModelSpec(model, opened, "cpu"), prompt=prompt,
                          max_tokens=len(ids) - 1, stop_at_eos=False)  # fmt: skip
    return report.tokens == list(ids[1:])


def heldout_loss(model: Path, table: Path) -> float:
    from engramctl.model.serve.evaluate import evaluate
    from engramctl.model.serve.opening import ModelSpec
    from engramctl.table.sources.table import open_table

    with open_table(table) as opened:
        report = evaluate(model=ModelSpec(model, opened, "cpu"),
                          benchmark=REPO / "sample_data/bench/lm_heldout.jsonl")  # fmt: skip
    return float(report.metrics["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100, help="--steps of each edit --learn")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--workdir", type=Path, help="keep the model and table here")
    parser.add_argument("--model", type=Path, help="a trained Engram model (with --table)")
    parser.add_argument("--table", type=Path, help="its table (copied, never written)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from _common import peak_rss_mib

    from engramctl.errors import EngramError
    from engramctl.model.learn import learn_fact
    from engramctl.table.commits import revert_table

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_learn_"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.model is None:
        model, trained = train_model(workdir, args.train_steps)
    else:
        model, trained = args.model, args.table
    train_seconds = time.perf_counter() - started
    table = workdir / "learn.zarr"
    shutil.rmtree(table, ignore_errors=True)
    shutil.copytree(trained, table)
    held_before = heldout_loss(model, table)
    from engramctl.table.commits import table_history

    trained_head = table_history(table).commits[-1].id  # training's commit: what revert restores
    facts = []
    for fact in FACTS:
        t0 = time.perf_counter()
        try:
            r = learn_fact(table, fact, model=model, steps=args.steps, lr=args.lr, device="cpu")
        except EngramError as exc:  # a fact with words the model never predicts
            facts.append({"fact": fact, "refused": str(exc)})
            continue
        facts.append({
            "fact": fact, "steps": r.steps, "stopped": r.stopped, "rows": sum(r.rows.values()),
            "loss_before": r.before.loss, "loss_after": r.after.loss,
            "continues_before": r.before.continues, "continues_after": r.after.continues,
            "seconds": time.perf_counter() - t0,
        })  # fmt: skip
    held_after = heldout_loss(model, table)
    written = [f for f in facts if "refused" not in f]
    for f in written:
        f["continues_at_end"] = greedy_continues(model, table, f["fact"])
    revert_table(table, trained_head)
    held_reverted = heldout_loss(model, table)

    def mean(key):
        return sum(f[key] for f in written) / max(1, len(written))

    doc = {
        "model": str(model), "train_steps": args.train_steps, "train_seconds": train_seconds,
        "steps": args.steps, "lr": args.lr, "facts": facts, "written": len(written),
        "continued_before": sum(f["continues_before"] for f in written),
        "continued_after_each": sum(f["continues_after"] for f in written),
        "continued_at_end_generate": sum(f["continues_at_end"] for f in written),
        "mean_fact_loss_before": mean("loss_before"), "mean_fact_loss_after": mean("loss_after"),
        "heldout_loss_before": held_before, "heldout_loss_after": held_after,
        "heldout_loss_after_revert": held_reverted,
        "seconds_per_fact": mean("seconds"), "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(doc))
        return
    for f in facts:
        if "refused" in f:
            print(f"  refused: {f['fact']!r}: {f['refused']}")
            continue
        print(
            f"  {f['steps']:3d} steps {f['rows']:4d} rows {f['seconds']:5.1f} s  loss "
            f"{f['loss_before']:.3f} -> {f['loss_after']:.3f}  continues "
            f"{f['continues_before']} -> {f['continues_after']} (at end: "
            f"{f['continues_at_end']})  {f['fact']!r}"
        )
    print(
        f"model {model} ({args.train_steps} training steps, {train_seconds:.0f} s)\n"
        f"facts written: {len(written)} of {len(facts)}; the model continues "
        f"{doc['continued_before']} before, {doc['continued_after_each']} right after each "
        f"write, {doc['continued_at_end_generate']} after all {len(written)} (generate, greedy)\n"
        f"mean fact loss {doc['mean_fact_loss_before']:.3f} -> {doc['mean_fact_loss_after']:.3f}"
        f" nats/token; held-out loss {held_before:.4f} -> {held_after:.4f} "
        f"(after revert to the trained commit: {held_reverted:.4f})\n"
        f"wall time per fact {doc['seconds_per_fact']:.2f} s; peak RSS "
        f"{doc['peak_rss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
