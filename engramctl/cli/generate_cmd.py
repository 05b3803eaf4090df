"""``engramctl generate``: decode from a checkpoint one token at a time, rows paged per step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import model_cmd
from .app import command, console, err_console
from .model_cmd import (
    CacheRowsOpt,
    DeviceOpt,
    ModelTableOpt,
    ResidentOpt,
    TokenizerOpt,
    close_table,
    print_paging,
)
from .options import Device, JsonFlag


@command("generate")
def generate_command(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint directory (engramctl train).")],
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
    table: ModelTableOpt = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Tokens to generate at most (stops at EOS).")
    ] = 64,
    temperature: Annotated[
        float, typer.Option("--temperature", help="0: greedy; above 0: sample softmax(l / T).")
    ] = 0.0,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Sample among the K most likely tokens only.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    device: DeviceOpt = Device.auto,
    cache_rows: CacheRowsOpt = 1 << 18,
    resident: ResidentOpt = False,
    tokenizer: TokenizerOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Continue a prompt one token at a time: each step hashes the new token with the n-gram
    context carried from the last (the streaming hasher) and pages its rows from the table.

    Example:
    engramctl generate --model m --table t.zarr --prompt "import os" \\
        --max-tokens 32
    """
    from ..model.generate import generate

    # model_cmd.open_table_for: looked up at call time (tests route it to table doubles)
    table_handle = model_cmd.open_table_for(table) if table is not None else None
    try:
        if table_handle is not None:
            from ..model.provenance import checkpoint_table_problem

            problem = checkpoint_table_problem(model, table_handle)
            if problem is not None:
                err_console.print(f"warning: {problem}")
        report = generate(
            model_dir=model,
            prompt=prompt,
            table=table_handle,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            device=device.value,
            cache_rows=cache_rows,
            resident=resident,
            tokenizer_source=tokenizer,
        )
    finally:
        close_table(table_handle)
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
    print_paging(report.paging)
