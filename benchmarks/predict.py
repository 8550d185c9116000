"""`modelgit predict --task score` on SmolLM2-135M over Parquet files of two sizes: peak RSS
against the model alone, and against reading the file whole (the usual script), rows/s.

    python3 benchmarks/predict.py [--small-mb 100] [--big-mb 1024] [--rows 64] [--json OUT]

The inputs are real text of this machine: man pages and Debian package descriptions
(``modelgit.demo_data.domain_texts``), a few thousand texts repeated in a seeded random order
until the file has the size asked for (snappy-compressed Parquet, row groups of 8192 rows).
Scoring a gigabyte of text with SmolLM2 on two cores would take days, so each file is measured
twice, each in a fresh process:

* ``predict``: ``modelgit predict MODEL --task score --limit ROWS``: the model over the first
  ROWS rows, read batch by batch (it stops reading there);
* ``read``: the same reader (``modelgit.predict.inputs``) through the *whole* file, batch by
  batch, every text touched, no model: the part of memory that could grow with the file;

plus, once, ``model``: the model loaded and one batch scored (the model's own footprint), and
``read_table``: ``pyarrow.parquet.read_table(file, columns=["text"])`` of the whole file, what a
script that loads its data first does. Each child's wall time, CPU seconds (user + sys) and peak
RSS come from ``os.wait4``; the machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
DEFAULT_MODEL = os.path.expanduser("~/.cache/modelgit/smollm2-135m-instruct")


def _texts() -> list[str]:
    sys.path.insert(0, SRC)
    from modelgit.demo_data import domain_texts
    from modelgit.errors import UsageError

    out = []
    for domain, count in (("manpages", 3000), ("debian", 600)):
        while count >= 50:
            try:
                out += domain_texts(domain, count, max_chars=1200)
                break
            except UsageError:  # fewer installed packages than asked for
                count //= 2
    return out


def write_input(path: str, megabytes: int, texts: list[str], seed: int) -> dict:
    """Rows ``{id, text}`` in a seeded random order of ``texts`` until the file reaches the size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(path) and os.path.getsize(path) >= megabytes << 20:
        return {"bytes": os.path.getsize(path), "rows": pq.ParquetFile(path).metadata.num_rows}
    rng, rows, tmp = random.Random(seed), 0, path + ".tmp"
    with pq.ParquetWriter(tmp, pa.schema([("id", pa.int64()), ("text", pa.string())])) as writer:
        while os.path.getsize(tmp) < megabytes << 20:
            chunk = [texts[rng.randrange(len(texts))] for _ in range(8192)]
            writer.write_table(pa.table({"id": list(range(rows, rows + len(chunk))),
                                         "text": chunk}), row_group_size=8192)
            rows += len(chunk)
    os.replace(tmp, path)
    return {"bytes": os.path.getsize(path), "rows": rows}


def measured(name: str, argv: list[str]) -> dict:
    """Run ``argv``: its wall time, CPU seconds and peak RSS (``os.wait4``: that one child's
    rusage) and its stdout."""
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "MODELGIT_PROGRESS": "0"}
    with open(os.devnull, "wb") as null:
        start = time.perf_counter()
        out_path = f"/tmp/predict-bench-{os.getpid()}.out"
        with open(out_path, "wb") as out:
            child = subprocess.Popen(argv, env=env, stdout=out, stderr=null)
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(out_path, encoding="utf-8") as handle:
        stdout = handle.read()
    os.unlink(out_path)
    if code:
        raise SystemExit(f"{name} failed with exit {code}: run `{' '.join(argv)}`")
    return {"name": name, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "stdout": stdout.strip()}


# -- children ---------------------------------------------------------------------------------


def child_read(path: str, batch_rows: int) -> None:
    """Read the whole file as predict does, batch by batch, touching every text."""
    sys.path.insert(0, SRC)
    from modelgit.predict.inputs import open_input

    rows = chars = 0
    with open_input(path, id_column="id") as source:
        for batch in source.batches(batch_rows):
            rows += len(batch.texts)
            chars += sum(len(t) for t in batch.texts if t)
    print(json.dumps({"rows": rows, "chars": chars}))


def child_read_table(path: str) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["text"])
    print(json.dumps({"rows": table.num_rows, "bytes": table.nbytes}))


def child_model(model: str, path: str, batch_rows: int) -> None:
    """The model loaded and one batch of the file scored: the model's own footprint."""
    sys.path.insert(0, SRC)
    import pyarrow.parquet as pq

    from modelgit.predict import BatchPredictor

    predictor = BatchPredictor(model, "score")
    first = next(pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["text"]))
    out = predictor({"text": first.column("text").to_numpy(zero_copy_only=False)})
    weights = sum(p.numel() * p.element_size() for p in predictor.engine.model.parameters())
    print(json.dumps({"rows": len(out["nll"]), "weights_mib": round(weights / 2**20)}))


# -- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--workdir", default="/tmp/predict-bench")
    parser.add_argument("--small-mb", type=int, default=100)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=64, help="rows scored per file")
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--runs", default="model,predict,read,read_table",
                        help="which runs (comma-separated; default all)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        {"read": lambda: child_read(rest[0], int(rest[1])),
         "read_table": lambda: child_read_table(rest[0]),
         "model": lambda: child_model(rest[0], rest[1], int(rest[2]))}[kind]()
        return
    os.makedirs(args.workdir, exist_ok=True)
    load_start = os.getloadavg()
    texts = _texts()
    files = {}
    # one seed: both files begin with the same rows, so the scored rows are the same and only
    # the file's size differs
    for label, megabytes, seed in (("small", args.small_mb, 1), ("big", args.big_mb, 1)):
        path = os.path.join(args.workdir, f"{label}-{megabytes}mb.parquet")
        files[label] = {"path": path, **write_input(path, megabytes, texts, seed)}
        print(f"{label}: {path}: {files[label]['bytes'] / 2**20:.0f} MiB, {files[label]['rows']} rows",
              flush=True)
    me = [sys.executable, os.path.abspath(__file__), "--child"]
    runs, results = set(args.runs.split(",")), []
    if "model" in runs:
        results.append(measured("model + one batch", me + ["model", args.model,
                                                           files["small"]["path"],
                                                           str(args.batch_rows)]))
        print(results[-1], flush=True)
    for label in ("small", "big"):
        info = files[label]
        if "predict" in runs:
            results.append(_predict_run(args, label, info))
            print(results[-1], flush=True)
        if "read" in runs:
            read = measured(f"read {label} (whole file)",
                            me + ["read", info["path"], str(args.batch_rows)])
            read.update(rows=json.loads(read["stdout"])["rows"], file_mib=round(info["bytes"] / 2**20))
            read["rows_per_s"] = round(read["rows"] / read["wall_s"])
            results.append(read)
            print(read, flush=True)
    if "read_table" in runs:
        whole = measured("read_table big (whole file)", me + ["read_table", files["big"]["path"]])
        whole.update(rows=json.loads(whole["stdout"])["rows"],
                     file_mib=round(files["big"]["bytes"] / 2**20))
        results.append(whole)
    report = {"load_start": [round(x, 1) for x in load_start],
              "load_end": [round(x, 1) for x in os.getloadavg()], "cores": os.cpu_count(),
              "model": args.model, "rows": args.rows, "batch_rows": args.batch_rows,
              "results": results}
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)


def _predict_run(args, label: str, info: dict) -> dict:
    """``modelgit predict --task score --limit ROWS`` over one file, in a fresh process."""
    out = os.path.join(args.workdir, f"scores-{label}.parquet")
    if os.path.exists(out):
        os.unlink(out)
    run = measured(f"predict {label} (first {args.rows} rows)", [
        sys.executable, "-m", "modelgit", "predict", args.model, "--task", "score",
        "--input", info["path"], "-o", out, "--id-column", "id", "--limit", str(args.rows),
        "--batch-rows", str(args.batch_rows), "--restart", "--json"])
    summary = json.loads(run["stdout"])
    run.update(rows=summary["rows"], rows_per_s=round(summary["rows_per_second"], 2),
               file_mib=round(info["bytes"] / 2**20))
    return run


def format_table(report: dict) -> str:
    lines = ["| run | file MiB | rows | wall s | CPU s | peak RSS MiB | RSS - model's MiB | rows/s |",
             "|---|---|---|---|---|---|---|---|"]
    model = next((r["peak_rss_mib"] for r in report["results"] if r["name"].startswith("model")),
                 None)
    for r in report["results"]:
        over = r["peak_rss_mib"] - model if model and r["name"].startswith("predict") else ""
        lines.append(f"| {r['name']} | {r.get('file_mib', '')} | {r.get('rows', '')} | "
                     f"{r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mib']} | {over} | "
                     f"{r.get('rows_per_s', '')} |")
    lines.append(f"\nload average (1, 5, 15 min) at start {report['load_start']}, at end "
                 f"{report['load_end']}; {report['cores']} cores")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
