"""``engramctl generate``: decode from a checkpoint one token at a time, rows paged per step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import model_cmd
from .app import command, console
from .model_cmd import print_paging
from .options import Device, JsonFlag, ModelFlags, finite_number


@command("generate")
def generate_command(
    model: ModelFlags.Model,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
    table: ModelFlags.Table = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Tokens to generate at most (stops at EOS).")
    ] = 64,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature",
            help="0: greedy; above 0: sample softmax(l / T).",
            callback=finite_number,
        ),
    ] = 0.0,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Sample among the K most likely tokens only.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    device: ModelFlags.Device = Device.auto,
    cache_rows: ModelFlags.CacheRows = ModelFlags.CACHE_ROWS,
    host_cache: ModelFlags.HostCache = None,
    host_static: ModelFlags.HostStatic = None,
    read_threads: ModelFlags.ReadThreads = ModelFlags.READ_THREADS,
    resident: ModelFlags.Resident = False,
    tokenizer: ModelFlags.Tokenizer = None,
    counts: Annotated[
        Path | None,
        typer.Option(
            "--counts", help="Pick each token from the model mixed with this count memory."
        ),
    ] = None,
    mix: Annotated[
        float | None,
        typer.Option(
            "--mix",
            help="With --counts: a constant λ in [0, 1] instead of the gate.",
            callback=finite_number,
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Continue a prompt one token at a time: each step hashes the new token with the n-gram
    context carried from the last (the streaming hasher) and pages its rows from the table;
    the model's keys and values are cached while the text fits its window. A step's rows are
    known only once the token before it is picked, so nothing is read ahead (eval's
    --prefetch-depth); --host-cache keeps rows in RAM between the table and the device cache
    (with --host-static, a fixed set of rows from cache-plan --host-static-out).

    Example:
    engramctl generate --model m --table t.zarr --prompt "import os" \\
        --max-tokens 32
    """
    from ..errors import UsageError
    from ..model.serve.generate import generate
    from ..model.serve.mixing import CountsSpec
    from ..model.serve.opening import ModelSpec
    from ..rowcache.tiers import TierConfig

    tiers = TierConfig.from_options(
        cache_rows=cache_rows,
        host_cache=host_cache,
        read_threads=read_threads,
        prefetch_depth=0,
        host_static=host_static,
    )
    if mix is not None and counts is None:
        raise UsageError("--mix weighs a count memory: give --counts too")
    counts_spec = None if counts is None else CountsSpec(counts, mix)

    with model_cmd.model_table(model, table) as table_handle:
        report = generate(
            model=ModelSpec(
                model, table_handle, device.value, cache_rows, resident, tokenizer, tiers
            ),
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            counts=counts_spec,
        )
    doc = report.to_dict()
    if json_out:
        typer.echo(json.dumps(doc))
        return
    console.print(prompt, end="", markup=False, highlight=False, style="dim")
    console.print(report.text, markup=False, highlight=False)
    console.print(
        f"{len(report.tokens)} tokens ({report.stopped}) in {report.seconds:.2f}s: "
        f"{report.tokens_per_s:,.1f} tokens/s on {report.device}"
    )
    mixed = report.counts
    if mixed is not None and mixed["lambda"]:
        start = mixed["prompt_recent_gain"]
        console.print(
            f"count memory {mixed['path']}: λ ({'the gate' if mixed['mix'] == 'gate' else '--mix'})"
            f" mean {mixed['mean_lambda']:.3f}, first step {mixed['lambda'][0]:.3f}"
            + ("" if start is None else f" (recent_gain from the prompt {start:+.3f})"),
            markup=False, highlight=False,
        )  # fmt: skip
    print_paging(report.paging)
