"""CLI verb of batch predictions: ``modelgit predict``."""

from __future__ import annotations

import json

__all__ = ["register"]


def cmd_predict(args) -> int:
    from ..predict import PredictRequest, predict

    request = PredictRequest(
        source=args.source, input=args.input, output=args.output, task=args.task, rev=args.rev,
        adapter=args.adapter, router=args.router, input_format=args.format,
        text_column=args.text_column, id_column=args.id_column, batch_rows=args.batch_rows,
        limit=args.limit, max_length=args.max_length, tokens_per_pass=args.tokens_per_pass,
        max_new_tokens=args.max_new_tokens, restart=args.restart, force=args.force)
    result = predict(request, progress=args.progress)
    summary = {"output": result.output, "rows": result.rows, "batches": result.batches,
               "resumed_batches": result.resumed, "truncated": result.truncated,
               "seconds": round(result.seconds, 3),
               "rows_per_second": round(result.rows_per_second, 3)}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        resumed = f" (resumed after {result.resumed} batches)" if result.resumed else ""
        cut = (f"; {result.truncated} texts over --max-length were truncated"
               if result.truncated else "")
        print(f"wrote {result.rows} rows to {result.output} in {result.seconds:.1f} s "
              f"({result.rows_per_second:.1f} rows/s in this run){resumed}{cut}")
    return 0


def register(sub, command) -> None:
    p = command(sub, "predict", cmd_predict,
                "Run a model over a Parquet, CSV or JSON Lines file, batch by batch, into Parquet "
                "(resumable: run the same command again after an interruption).",
                "modelgit predict my-model/ --rev v2 --task score --input texts.parquet -o scores.parquet\n"
                "modelgit predict my-model/ --router --task generate --input prompts.jsonl -o out.parquet\n"
                "modelgit predict my-model/ --adapter shell-lora --task embed --input docs.csv \\\n"
                "    --text-column body --id-column doc_id -o embeddings.parquet\n"
                "modelgit predict routers/ex --router --task classify --input reviews.parquet -o labels.parquet")
    p.add_argument("source", metavar="SOURCE",
                   help="a model repository (its release), a router directory (`route build`), "
                   "or a model directory")
    p.add_argument("--rev", help="the release of a repository (default: the newest)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--adapter", metavar="NAME",
                       help="one adapter of the library (a model directory: an adapter directory)")
    which.add_argument("--router", action="store_true",
                       help="route each row with the release's (or directory's) router")
    p.add_argument("--task", required=True, choices=["generate", "score", "classify", "embed"])
    p.add_argument("--input", required=True, help="a .parquet, .csv, .tsv or .jsonl file")
    p.add_argument("--format", choices=["parquet", "csv", "tsv", "jsonl"],
                   help="the input's format (default: from its suffix)")
    p.add_argument("-o", "--output", required=True, help="the Parquet file to write")
    p.add_argument("--text-column", default="text", help="the column of texts (default text)")
    p.add_argument("--id-column", help="a column copied to the output beside the row number")
    p.add_argument("--batch-rows", type=int, default=64,
                   help="rows per batch: the unit of resuming (default 64)")
    p.add_argument("--limit", type=int, metavar="ROWS", help="only the first ROWS rows")
    p.add_argument("--max-length", type=int, metavar="TOKENS",
                   help="cut longer texts to this many tokens (default: the model's context, at "
                   "most 1024)")
    p.add_argument("--tokens-per-pass", type=int, default=2048,
                   help="padded tokens per forward pass: bounds memory (default 2048)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="generate: tokens to add, greedy (default 32)")
    p.add_argument("--restart", action="store_true",
                   help="discard the unfinished work of another job on this output")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
