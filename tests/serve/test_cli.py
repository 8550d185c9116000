"""`modelgit serve` as a user runs it: a subprocess on a free port, talked to over HTTP, stopped
with Ctrl-C; `--check`; and the CLI's refusals (no traceback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from gitutil import modelgit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _library_args(domains) -> list[str]:
    return ["--base", domains["base"], "--adapter", f"animals={domains['animals']}",
            "--adapter", f"code={domains['code']}"]


def test_check_lists_what_would_be_served(tmp_path, domains):
    out = modelgit(tmp_path, "serve", *_library_args(domains), "--rollout", "ab=animals:3,code:1",
                   "--threads", "2", "--check", "--json").stdout
    described = json.loads(out)
    assert described["models"] == ["base", "animals", "code", "ab"]
    assert described["task"] == "causal_lm" and described["context"] == 512
    assert described["threads"] == 2
    assert described["rollouts"] == {"ab": {"animals": 0.75, "code": 0.25}}


def test_refusals_name_the_fix(tmp_path, domains):
    cases = [(["--rollout", "ab=animal:1,code:1"], "did you mean 'animals'"),
             (["--rollout", "ab"], "NAME=MODEL_A:WEIGHT"),
             (["--max-batch", "0"], "max_batch is 0"),
             (["--threads", "0"], "threads is 0"),
             (["--rev", "v1"], "needs a model repository")]
    for extra, says in cases:
        args = _library_args(domains) if extra[0] != "--rev" else [domains["base"]]
        result = modelgit(tmp_path, "serve", *args, *extra, "--check", check=False)
        assert result.returncode == 2 and says in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    missing = modelgit(tmp_path, "serve", str(tmp_path / "nothing"), "--check", check=False)
    assert missing.returncode == 2 and "neither a model repository" in missing.stderr
    half = modelgit(tmp_path, "serve", "--base", domains["base"], "--check", check=False)
    assert half.returncode == 2 and "--base and --adapter go together" in half.stderr


def test_serve_in_a_subprocess_answers_and_stops_on_ctrl_c(tmp_path, domains):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "modelgit", "serve", *_library_args(domains),
                                "--port", str(port), "--log-level", "warning"],
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        # the server says where it listens once the model is loaded, before uvicorn binds: poll
        # until it answers (no timing assumed; a dead process fails the test)
        line = process.stderr.readline()
        assert f"on http://127.0.0.1:{port}/v1" in line, line
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)  # not listening yet: poll again (no deadline)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=None,
                            json={"model": "code", "prompt": "def add", "max_tokens": 3})
        assert answer.status_code == 200 and answer.json()["model"] == "code"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait()
    assert process.returncode == 0, process.stderr.read()
