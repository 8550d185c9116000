#!/usr/bin/env python3
"""Git-integration benchmark: modelgit against Git-Theta 0.2.0 and plain git-lfs.

The same sequence of commits runs in a fresh git repository per tool, on a Llama-like fp32
checkpoint of about ``--size-mb`` MiB (default 1024) written with the safetensors layout:

1. v1 committed (``git add`` then ``git commit``, each timed);
2. v2: one MLP matrix regenerated;
3. v3: every tensor w * (1 + 1e-3 * N(0, 1)) (a fine-tuning-like update);
4. v4: a LoRA (rank 8, alpha 16, on q_proj and v_proj) merged into the weights;
5. ``git checkout -q <v1 commit>`` and ``git checkout -q main`` (file checked against v1 / v4 by
   sha256), then the first ``git status`` after it;
6. ``git diff <v1> <v2>`` and ``git diff <v3> <v4>`` with the tool's diff driver (git-lfs has none:
   git diffs its pointer files);
7. ``git push`` to a local bare repository and a clone from it (checked against v4 by sha256);
   ``du -sb`` of the clone's ``.git`` (what it received: git's objects and the tool's store; a
   hard link to the remote's file counts whole, as it would travel over a network) against the
   size of the file it checked out.

For every timed command: wall time, CPU time of the command and all its descendants, and the peak over time of the summed ``VmRSS`` of the command
and all its descendants (git, filter processes, hooks, diff drivers), sampled from ``/proc``
every 50 ms (``RssAnon`` is summed too: it leaves out the page cache a process has mapped).
``sync`` runs before each timed command. The machine may be shared: before each step the script
waits until it is idle (``--idle-cores``, ``--idle-wait``), counts the CPU time other processes
used during the step (a time is marked ``*`` when they used more than half a core), and re-runs
the steps that leave no state behind (diffs, clone) when that happened (``--retries``).
After the sequence: ``du -sb`` of the working
repository's ``.git`` (it holds every tool's objects: ``.git/modelgit/store``, ``.git/lfs``) and
of the bare remote after the push.

Tools are set up exactly as their documentation says, each with its own temporary ``HOME``
(``GIT_CONFIG_NOSYSTEM=1``, identity from ``GIT_AUTHOR_*``/``GIT_COMMITTER_*``):

* modelgit: ``modelgit init``, ``modelgit track '*.safetensors'``; clone: ``modelgit clone``;
* git-lfs: ``git lfs install``, ``git lfs track '*.safetensors'``; clone: ``git clone``;
* Git-Theta: ``git lfs install``, ``git theta install``, ``git theta track model.safetensors``,
  with ``GIT_THETA_CHECKPOINT_TYPE=safetensors``; clone: ``git clone``. It is installed if
  missing into a venv at ``benchmarks/.venv-git-theta`` (``--git-theta-venv`` to use another).
  Each step has a timeout (``--timeout``, 20 min); a step that hits it is reported as such.

Usage::

    python3 benchmarks/git.py                        # ~1 GiB, the three tools (~10-15 min)
    python3 benchmarks/git.py --size-mb 30 --tools modelgit,git-lfs     # smoke test
    python3 benchmarks/git.py --json figures.json --keep --workdir /data/tmp

Everything happens in a temporary directory (``--workdir`` chooses where it is created), removed
at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HIDDEN = 1024
FFN = 2816
MAX_VOCAB = 32000
WEIGHT_STD = 0.02
NOISE = 1e-3
LORA_RANK, LORA_ALPHA, LORA_STD = 8, 16, 0.02
MB = 1e6  # figures in decimal megabytes
MIB = 2**20
SAMPLE_S = 0.05
TOOLS = ("modelgit", "git-lfs", "git-theta")
THETA_SPEC = "git-theta[safetensors]==0.2.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.path.join(HERE, ".venv-git-theta")
FILE = "model.safetensors"

# salts of the random streams
SALT_INIT, SALT_V2, SALT_V3, SALT_LORA = 1, 2, 3, 4

TARGET_SPEEDUP = 10.0  # x faster than Git-Theta
TARGET_PEAK_MB = 1000.0
TARGET_STORED_VS_LFS = 0.5


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ============================================================================ the model
def model_spec(size_mb: float, hidden: int = HIDDEN, ffn: int = FFN) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of a Llama-like decoder of about ``size_mb`` MiB in fp32."""
    target = size_mb * MIB
    vocab = int(min(MAX_VOCAB, max(256, 0.125 * target / (hidden * 4))))
    per_layer = (4 * hidden * hidden + 3 * ffn * hidden + 2 * hidden) * 4
    layers = max(1, round((target - 2 * vocab * hidden * 4) / per_layer))
    spec = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        spec += [(p + f"self_attn.{x}_proj.weight", (hidden, hidden)) for x in "qkvo"]
        spec += [(p + "mlp.gate_proj.weight", (ffn, hidden)), (p + "mlp.up_proj.weight", (ffn, hidden)),
                 (p + "mlp.down_proj.weight", (hidden, ffn)),
                 (p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
    spec += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return spec


def changed_tensor(spec) -> str:
    """The matrix regenerated in v2: the up projection of the middle layer."""
    ups = [name for name, _ in spec if name.endswith("mlp.up_proj.weight")]
    return ups[len(ups) // 2]


def _rng(seed: int, salt: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, salt, index])


def init_tensor(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    values = rng.standard_normal(math.prod(shape), dtype=np.float32)
    values *= np.float32(WEIGHT_STD)
    if name.endswith("norm.weight"):  # norm gains sit around 1, like a trained model's
        values += np.float32(1.0)
    return values.reshape(shape)


def safetensors_header(spec) -> tuple[bytes, dict[str, tuple[int, tuple[int, ...]]]]:
    """The header safetensors itself writes for these fp32 tensors (sorted by name, compact JSON
    padded with spaces to 8 bytes), and {name: (data offset, shape)}."""
    header, layout, offset = {}, {}, 0
    for name, shape in sorted(spec):
        size = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        layout[name] = (offset, tuple(shape))
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, layout


def check_layout() -> None:
    """Our tensor-by-tensor writer must produce safetensors' own bytes: Git-Theta re-serializes
    the checkpoint with safetensors on checkout, and the benchmark compares files byte for byte."""
    import safetensors.numpy

    spec = model_spec(1, hidden=8, ffn=16)[:12] + [("lm_head.weight", (3, 8)), ("model.norm.weight", (8,))]
    tensors = {name: init_tensor(name, shape, _rng(0, SALT_INIT, i)) for i, (name, shape) in enumerate(spec)}
    header, layout = safetensors_header(spec)
    ours = header + b"".join(tensors[name].tobytes() for name in sorted(layout, key=lambda n: layout[n][0]))
    if ours != safetensors.numpy.save(tensors):
        raise RuntimeError("the benchmark's safetensors writer no longer matches safetensors' layout")


def write_v1(path: str, spec, seed: int) -> None:
    header, layout = safetensors_header(spec)
    index = {name: i for i, (name, _) in enumerate(spec)}
    with open(path, "wb") as handle:
        handle.write(header)
        for name in sorted(layout, key=lambda n: layout[n][0]):
            shape = layout[name][1]
            handle.write(init_tensor(name, shape, _rng(seed, SALT_INIT, index[name])).tobytes())


class Mapped:
    """Writable memory-mapped views of the tensors of one of our safetensors files."""

    def __init__(self, path: str, spec):
        header, self.layout = safetensors_header(spec)
        self.path, self.start = path, len(header)

    def tensor(self, name: str) -> np.memmap:
        offset, shape = self.layout[name]
        return np.memmap(self.path, dtype=np.float32, mode="r+", offset=self.start + offset, shape=shape)


def derive(src: str, dst: str, spec, seed: int, version: int) -> None:
    shutil.copyfile(src, dst)
    mapped = Mapped(dst, spec)
    index = {name: i for i, (name, _) in enumerate(spec)}
    if version == 2:
        name = changed_tensor(spec)
        view = mapped.tensor(name)
        view[...] = init_tensor(name, view.shape, _rng(seed, SALT_V2, index[name]))
        view.flush()
    elif version == 3:
        for name, shape in spec:
            view = mapped.tensor(name)
            noise = _rng(seed, SALT_V3, index[name]).standard_normal(shape, dtype=np.float32)
            noise *= np.float32(NOISE)
            noise += np.float32(1.0)
            view *= noise
            view.flush()
            del view, noise
    elif version == 4:
        scale = np.float32(LORA_ALPHA / LORA_RANK)
        for name, shape in spec:
            if not (name.endswith("q_proj.weight") or name.endswith("v_proj.weight")):
                continue
            rng = _rng(seed, SALT_LORA, index[name])
            a = rng.standard_normal((LORA_RANK, shape[1]), dtype=np.float32) * np.float32(LORA_STD)
            b = rng.standard_normal((shape[0], LORA_RANK), dtype=np.float32) * np.float32(LORA_STD)
            view = mapped.tensor(name)
            view += scale * (b @ a)
            view.flush()
            del view
    else:
        raise ValueError(version)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


# ============================================================================ measuring
_PF_KTHREAD = 0x00200000
_HZ = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, int, bool]]:
    """{pid: (ppid, utime + stime in ticks, start time in ticks since boot, kernel thread)}."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        f = data[data.rindex(b")") + 2:].split()
        table[int(entry)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[19]), bool(int(f[6]) & _PF_KTHREAD))
    return table


def _tree(root: int, table) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    out, i = [root], 0
    while i < len(out):
        out.extend(children.get(out[i], ()))
        i += 1
    return out


def _uptime_ticks() -> int:
    with open("/proc/uptime") as handle:
        return int(float(handle.read().split()[0]) * _HZ)


def _rss(pid: int) -> tuple[int, int, str]:
    """(VmRSS, RssAnon, name) of a process, sizes in bytes; zeros when it is gone or a zombie."""
    rss = anon = 0
    name = "?"
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Name:"):
                    name = line.split(None, 1)[1].strip().decode(errors="replace")
                elif line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    if rss and name.startswith("python"):  # say which python: the filter, a hook, a diff driver
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            name = " ".join(a.decode(errors="replace") for a in argv[1:4]).strip() or name
        except OSError:
            pass
    return rss, anon, name


def _is_git(name: str) -> bool:
    """git's own processes (git, git-receive-pack...: ``Name`` is cut to 15 characters), not the
    tools it runs (git-lfs, git-theta-filter, python)."""
    return name == "git" or (name.startswith("git-") and not name.startswith(("git-lfs", "git-theta")))


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped, and the CPU time
    that user processes outside that tree (other people's jobs) used meanwhile."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_rss, self.peak_anon, self.samples, self.max_procs = pid, 0, 0, 0, 0
        self.at_peak: list[tuple[str, int, int]] = []  # (process, VmRSS, RssAnon) at the peak
        self.peak_tool_rss = 0  # the same sum without git's own processes
        self.stop = threading.Event()
        self.started = _uptime_ticks()
        self._foreign_first: dict[int, int] = {}
        self._foreign_last: dict[int, int] = {}

    @property
    def foreign_cpu_seconds(self) -> float:
        return sum(self._foreign_last[p] - self._foreign_first[p] for p in self._foreign_last) / _HZ

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            table = _proc_table()
            pids = _tree(self.pid, table)
            mine = set(pids)
            for pid, (_ppid, cpu, start, kthread) in table.items():
                if pid in mine or pid == me or kthread:
                    continue
                if pid not in self._foreign_first:  # born during the step: all its CPU counts
                    self._foreign_first[pid] = 0 if start >= self.started else cpu
                self._foreign_last[pid] = cpu
            values = [_rss(p) for p in pids]
            total = sum(v[0] for v in values)
            self.peak_tool_rss = max(self.peak_tool_rss, sum(v[0] for v in values if not _is_git(v[2])))
            if total > self.peak_rss:
                self.peak_rss = total
                self.at_peak = sorted(((v[2], v[0], v[1]) for v in values if v[0]), key=lambda v: -v[1])
            self.peak_anon = max(self.peak_anon, sum(v[1] for v in values))
            self.max_procs = max(self.max_procs, len(pids))
            self.samples += 1
            self.stop.wait(SAMPLE_S)


class StepFailed(Exception):
    pass


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / hz, total / hz


def wait_until_idle(max_busy_cores: float, limit_s: float) -> float:
    """Wait (up to ``limit_s``) until the machine's CPU use over 1 s is below ``max_busy_cores``;
    returns the seconds waited. Other people's jobs on a shared machine skew every timing."""
    start = time.perf_counter()
    while True:
        b0, _ = _cpu_busy()
        time.sleep(1.0)
        b1, _ = _cpu_busy()
        waited = time.perf_counter() - start
        if b1 - b0 <= max_busy_cores or waited >= limit_s:
            return waited
        time.sleep(4.0)


def run_timed(argv: list[str], cwd: str, env: dict, timeout: float, stdout_path: str | None = None,
              log_dir: str | None = None, idle_wait: tuple[float, float] | None = None) -> dict:
    """Run one command after ``sync``: wall time, CPU time, peak summed RSS of its process tree,
    and the CPU time the rest of the machine used meanwhile (other jobs: noise)."""
    subprocess.run(["sync"], check=False)
    waited = wait_until_idle(*idle_wait) if idle_wait else 0.0
    err_path = os.path.join(log_dir or cwd, f".stderr-{os.getpid()}.txt")
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    err = open(err_path, "wb")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, _ = _cpu_busy()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the session started for this command only
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    proc.wait()  # a blocking waitpid: Popen.wait(timeout) would poll and round the time up
    elapsed = time.perf_counter() - start
    timer.cancel()
    timed_out = timed_out.is_set()
    busy_after, _ = _cpu_busy()
    sampler.stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if stdout_path:
        out.close()
    err.close()
    with open(err_path, "rb") as handle:
        stderr = handle.read().decode(errors="replace")
    os.unlink(err_path)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {
        "cmd": " ".join(argv), "seconds": elapsed, "timed_out": timed_out, "returncode": proc.returncode,
        "cpu_seconds": cpu, "waited_for_idle_s": waited,
        # CPU of user processes outside the command's tree (other jobs on a shared machine; not
        # the kernel's writeback threads, not this script); sampled, so processes living less
        # than 50 ms are missed
        "others_cpu_seconds": sampler.foreign_cpu_seconds,
        "machine_busy_cpu_seconds": busy_after - busy_before,
        "peak_rss_mb": sampler.peak_rss / MB, "peak_anon_mb": sampler.peak_anon / MB,
        "peak_rss_without_git_mb": sampler.peak_tool_rss / MB,
        "samples": sampler.samples, "max_processes": sampler.max_procs,
        "at_peak": [{"process": n, "rss_mb": r / MB, "anon_mb": a / MB} for n, r, a in sampler.at_peak[:8]],
    }
    if timed_out or proc.returncode != 0:
        result["stderr_tail"] = stderr[-2000:]
    return result


def du(path: str) -> int:
    if not os.path.exists(path):
        return 0
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


# ============================================================================ tools
class Tool:
    name = ""
    diff_note = ""

    def __init__(self, root: str, args, base_env: dict):
        self.root = os.path.join(root, self.name)
        self.home = os.path.join(self.root, "home")
        self.tmp = os.path.join(self.root, "tmp")
        self.repo = os.path.join(self.root, "repo")
        self.bare = os.path.join(self.root, "remote.git")
        self.clone_dir = os.path.join(self.root, "clone")
        for d in (self.home, self.tmp):
            os.makedirs(d, exist_ok=True)
        self.args = args
        self.env = dict(base_env, HOME=self.home, TMPDIR=self.tmp, XDG_CONFIG_HOME=os.path.join(self.home, ".config"))

    def git(self, *argv: str, cwd: str | None = None) -> str:
        return self.run(["git", *argv], cwd=cwd)

    def run(self, argv: list[str], cwd: str | None = None) -> str:
        result = subprocess.run(argv, cwd=cwd or self.repo, env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise StepFailed(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        return result.stdout

    def init_repo(self) -> None:
        os.makedirs(self.repo)
        self.git("init", "-q", "-b", "main")

    def setup(self) -> None:
        raise NotImplementedError

    def clone_cmd(self) -> list[str]:
        return ["git", "clone", "-q", self.bare, self.clone_dir]

    def stored_breakdown(self) -> dict[str, int]:
        return {}


class Modelgit(Tool):
    name = "modelgit"
    diff_note = "modelgit's diff driver: per-tensor changes"

    def mg(self) -> list[str]:
        return [sys.executable, "-m", "modelgit"]

    def setup(self) -> None:
        self.init_repo()
        self.run(self.mg() + ["init"])
        self.run(self.mg() + ["track", "*.safetensors"])
        self.git("add", ".gitattributes")
        self.git("commit", "-q", "-m", "track checkpoints with modelgit")

    def __init__(self, root: str, args, base_env: dict):
        super().__init__(root, args, base_env)
        # the filter logs what it does (cleaned and stored / stat cache hit / fetched): one line
        # per file and git command, so it costs nothing measurable and tells why a step was slow
        self.env.setdefault("MODELGIT_LOG", os.path.join(self.tmp, "modelgit.log"))

    def clone_cmd(self) -> list[str]:
        return self.mg() + ["clone", self.bare, self.clone_dir]

    def stored_breakdown(self) -> dict[str, int]:
        return {"store": du(os.path.join(self.repo, ".git", "modelgit", "store"))}


class GitLfs(Tool):
    name = "git-lfs"
    diff_note = "git-lfs has no diff driver: git diffs the pointer files"

    def setup(self) -> None:
        self.run(["git", "lfs", "install"], cwd=self.home)  # global config of the temporary HOME
        self.init_repo()
        self.git("lfs", "install", "--local")
        self.git("lfs", "track", "*.safetensors")
        self.git("add", ".gitattributes")
        self.git("commit", "-q", "-m", "track checkpoints with git-lfs")

    def stored_breakdown(self) -> dict[str, int]:
        return {"lfs": du(os.path.join(self.repo, ".git", "lfs"))}


class GitTheta(Tool):
    name = "git-theta"
    diff_note = "git-theta-diff on both checkpoints (git smudges them to temporary files)"

    def __init__(self, root: str, args, base_env: dict):
        super().__init__(root, args, base_env)
        venv_bin = os.path.join(args.git_theta_venv, "bin")
        self.env["PATH"] = venv_bin + os.pathsep + self.env.get("PATH", "")
        self.env["GIT_THETA_CHECKPOINT_TYPE"] = "safetensors"

    def setup(self) -> None:
        self.run(["git", "lfs", "install"], cwd=self.home)
        self.run(["git", "theta", "install"], cwd=self.home)  # filter/diff/merge in ~/.gitconfig
        self.init_repo()
        self.git("theta", "track", FILE)  # .gitattributes (and git add), post-commit/pre-push hooks
        self.git("add", ".gitattributes")
        self.git("commit", "-q", "-m", "track checkpoints with git-theta")

    def stored_breakdown(self) -> dict[str, int]:
        return {"lfs": du(os.path.join(self.repo, ".git", "lfs"))}


TOOL_CLASSES = {"modelgit": Modelgit, "git-lfs": GitLfs, "git-theta": GitTheta}


def ensure_git_theta(venv: str) -> str:
    """The venv's git-theta (installed there first if missing); returns its version."""
    python = os.path.join(venv, "bin", "python")
    probe = [python, "-c", "import importlib.metadata as m; print(m.version('git-theta'))"]
    if os.path.exists(python):
        result = subprocess.run(probe, capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.strip()
    say(f"installing {THETA_SPEC} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", THETA_SPEC], check=True)
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


# ============================================================================ the sequence
def run_sequence(tool: Tool, versions: list[str], shas: list[str], args) -> dict:
    res: dict = {"steps": {}, "checks": {}, "stored": {}, "errors": []}
    steps = res["steps"]
    timeout = args.timeout
    log_dir = tool.tmp

    mg_log = tool.env.get("MODELGIT_LOG")

    def step(key: str, argv: list[str], cwd: str | None = None, stdout_path: str | None = None,
             critical: bool = True, redo=None) -> dict:
        """``redo``: the step leaves no state behind (or this callable undoes it), so it is run
        again, up to --retries times, when other jobs loaded the machine while it ran."""
        log_start = os.path.getsize(mg_log) if mg_log and os.path.exists(mg_log) else 0
        idle = (args.idle_cores, args.idle_wait) if args.idle_wait > 0 else None
        noisy_runs = []
        while True:
            r = run_timed(argv, cwd or tool.repo, tool.env, timeout, stdout_path, log_dir, idle)
            contended = r["others_cpu_seconds"] > 0.25 and r["others_cpu_seconds"] / r["seconds"] > NOISY_CORES
            if not (redo and contended and r["returncode"] == 0 and len(noisy_runs) < args.retries):
                break
            noisy_runs.append(r["seconds"])
            say(f"  {tool.name:9s} {key:22s} {r['seconds']:8.2f} s with other jobs using "
                f"{r['others_cpu_seconds']:.1f} CPU-s meanwhile: run again")
            if callable(redo):
                redo()
        if noisy_runs:
            r["noisy_runs_discarded_s"] = noisy_runs
        steps[key] = r
        if mg_log and os.path.exists(mg_log):  # what modelgit's filter did inside this git command
            with open(mg_log, "rb") as handle:
                handle.seek(log_start)
                r["modelgit_log"] = [line.split(": ", 1)[-1] for line in handle.read().decode().splitlines()]
        status = "TIMEOUT" if r["timed_out"] else ("ok" if r["returncode"] == 0 else f"rc={r['returncode']}")
        if r.get("modelgit_log"):
            say(f"  {tool.name:9s} {key:22s} filter: " + "; ".join(r["modelgit_log"])[:300])
        say(f"  {tool.name:9s} {key:22s} {r['seconds']:8.2f} s  peak {r['peak_rss_mb']:8.0f} MB "
            f"(anon {r['peak_anon_mb']:.0f})  cpu {r['cpu_seconds']:.1f} s  others {r['others_cpu_seconds']:.1f} s"
            + (f"  waited {r['waited_for_idle_s']:.0f} s" if r["waited_for_idle_s"] > 2 else "")
            + f"  {status}  at peak: "
            + ", ".join(f"{p['process'][:30]} {p['rss_mb']:.0f}" for p in r["at_peak"][:3]))
        if status != "ok":
            res["errors"].append(f"{key}: {status} {r.get('stderr_tail', '')[-500:]}")
            if critical:
                raise StepFailed(f"{key} {status}")
        return r

    def check(key: str, path: str, expected: str) -> None:
        ok = os.path.exists(path) and sha256(path) == expected
        res["checks"][key] = ok
        say(f"  {tool.name:9s} check {key}: {'ok' if ok else 'MISMATCH'}")

    try:
        tool.setup()
        target = os.path.join(tool.repo, FILE)
        commits = []
        for i, version in enumerate(versions, 1):
            shutil.copyfile(version, target)  # like a training script overwriting its checkpoint
            step(f"add v{i}", ["git", "add", FILE])
            step(f"commit v{i}", ["git", "commit", "-q", "-m", f"v{i}"])
            commits.append(tool.git("rev-parse", "HEAD").strip())
        res["stored"]["git_dir_after_commits"] = du(os.path.join(tool.repo, ".git"))
        step("checkout v1", ["git", "checkout", "-q", commits[0]], critical=False)
        check("checkout v1 == v1", target, shas[0])
        step("checkout main", ["git", "checkout", "-q", "main"], critical=False)
        check("checkout main == v4", target, shas[-1])
        # the first look at the work tree after a checkout (what a user's next command pays)
        step("status after checkout", ["git", "status", "--porcelain"], critical=False)
        for a, b in ((1, 2), (3, 4)):
            out = os.path.join(tool.tmp, f"diff-v{a}-v{b}.txt")
            step(f"diff v{a} v{b}", ["git", "diff", commits[a - 1], commits[b - 1]], stdout_path=out,
                 critical=False, redo=True)
            with open(out, "rb") as handle:
                text = handle.read().decode(errors="replace")
            res.setdefault("diff_output", {})[f"v{a} v{b}"] = {"bytes": len(text), "head": text[:1500]}
        if isinstance(tool, Modelgit):  # the native command, from stored chunks (no smudge)
            for a, b in ((1, 2), (3, 4)):
                step(f"modelgit diff v{a} v{b}", tool.mg() + ["diff", commits[a - 1], commits[b - 1]],
                     critical=False, redo=True)
        res["stored"]["git_dir"] = du(os.path.join(tool.repo, ".git"))
        res["stored"].update(tool.stored_breakdown())
        tool.git("init", "-q", "--bare", "-b", "main", tool.bare, cwd=tool.root)
        tool.git("remote", "add", "origin", tool.bare)
        step("push", ["git", "push", "-q", "origin", "main"])
        res["stored"]["bare_remote"] = du(tool.bare)
        step("clone", tool.clone_cmd(), cwd=tool.root, redo=lambda: shutil.rmtree(tool.clone_dir))
        check("clone == v4", os.path.join(tool.clone_dir, FILE), shas[-1])
        # what the clone had to receive (git's objects and the tool's store: what a clone over a
        # network moves, whether or not a local clone shares files with the remote by hard links)
        # against what it checked out
        res["stored"]["clone_git_dir"] = du(os.path.join(tool.clone_dir, ".git"))
        res["stored"]["clone_checkout"] = os.path.getsize(os.path.join(tool.clone_dir, FILE))
    except StepFailed as exc:
        res["errors"].append(f"stopped: {exc}")
        say(f"  {tool.name}: stopped: {exc}")
    return res


# ============================================================================ the report
ADD_ROWS = [f"{kind} v{i}" for i in range(1, 5) for kind in ("add", "commit", "add+commit")]
TIME_ROWS = ADD_ROWS + ["checkout v1", "checkout main", "status after checkout", "diff v1 v2",
                        "diff v3 v4",
                        "modelgit diff v1 v2", "modelgit diff v3 v4", "push", "clone"]
# CPU seconds of the command's whole process tree: the figure that holds on a loaded machine
CPU_ROWS = [f"add v{i}" for i in range(1, 5)] + ["checkout v1", "checkout main", "diff v1 v2",
                                                "diff v3 v4", "push", "clone"]
TARGET_CLONE_RATIO = 1.1  # bytes a clone receives / bytes it checks out
SPEEDUP_TARGET_ROWS = {f"{kind} v{i}" for i in range(1, 5) for kind in ("add", "add+commit")} | \
    {"checkout v1", "checkout main", "diff v1 v2", "diff v3 v4"}


def step_value(result: dict | None, key: str, field: str = "seconds"):
    """(value, timed_out) of a step; add+commit sums the two steps."""
    if not result:
        return None, False
    steps = result["steps"]
    if key.startswith("add+commit"):
        parts = [steps.get(key.replace("add+commit", k)) for k in ("add", "commit")]
        if any(p is None for p in parts):
            return None, False
        return sum(p[field] for p in parts), any(p["timed_out"] for p in parts)
    r = steps.get(key)
    if r is None:
        return None, False
    failed = r["returncode"] not in (0, None) and not r["timed_out"]
    return (None if failed else r[field]), r["timed_out"]


NOISY_CORES = 0.5  # other jobs used more than this many cores on average during the step


def noisy(result: dict | None, key: str) -> bool:
    """Whether other jobs on the machine used much CPU while this step ran (marked * in the table)."""
    if not result:
        return False
    keys = [key.replace("add+commit", k) for k in ("add", "commit")] if key.startswith("add+commit") else [key]
    parts = [result["steps"].get(k) for k in keys]
    parts = [p for p in parts if p is not None]
    others = sum(p.get("others_cpu_seconds", 0.0) for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    return others > 0.25 and others / seconds > NOISY_CORES  # (/proc/stat counts in 10 ms ticks)


def fmt(value, timed_out=False, unit="s"):
    if value is None:
        return "n/a"
    if unit == "s":
        text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    else:
        text = f"{value:,.0f}"
    return (">" + text + " (timeout)") if timed_out else text


def build_rows(results: dict) -> list[dict]:
    mg, lfs, theta = (results.get(t) for t in TOOLS)
    rows = []

    def ratio(num, num_to, den):
        if num is None or den in (None, 0):
            return "n/a", None
        value = num / den
        return (">" if num_to else "") + f"{value:.2f}", value

    for key in TIME_ROWS:
        vals = {t: step_value(results.get(t), key) for t in TOOLS}
        if all(v[0] is None for v in vals.values()) and not any(v[1] for v in vals.values()):
            continue
        m, (l, lt), (g, gt) = vals["modelgit"][0], vals["git-lfs"], vals["git-theta"]
        rt, rt_val = ratio(g, gt, m)
        rl, _ = ratio(l, lt, m)
        target, verdict = "", ""
        if key in SPEEDUP_TARGET_ROWS:
            target = f"theta/mg >= {TARGET_SPEEDUP:g}"
            if rt_val is None:
                verdict = "n/a"
            elif rt_val >= TARGET_SPEEDUP:
                verdict = "PASS"
            else:
                verdict = "FAIL" if not gt else "FAIL (theta timed out)"
        cell = {t: ("*" if noisy(results.get(t), key) else "") for t in TOOLS}
        rows.append({"step": f"time {key} (s)", "modelgit": fmt(m, vals["modelgit"][1]) + cell["modelgit"],
                     "git-lfs": fmt(l, lt) + cell["git-lfs"], "git-theta": fmt(g, gt) + cell["git-theta"],
                     "theta/mg": rt, "lfs/mg": rl, "target": target, "result": verdict})
    for key in CPU_ROWS:
        vals = {t: step_value(results.get(t), key, "cpu_seconds") for t in TOOLS}
        if all(v[0] is None for v in vals.values()):
            continue
        m, l, g = (vals[t][0] for t in TOOLS)
        rows.append({"step": f"cpu {key} (CPU-s)", "modelgit": fmt(m), "git-lfs": fmt(l),
                     "git-theta": fmt(g), "theta/mg": ratio(g, False, m)[0],
                     "lfs/mg": ratio(l, False, m)[0], "target": "", "result": ""})
    # peak memory
    peak_keys = [k for k in TIME_ROWS if not k.startswith("add+commit")]
    max_peak = {}
    for key in peak_keys:
        vals = {t: step_value(results.get(t), key, "peak_rss_mb") for t in TOOLS}
        if all(v[0] is None for v in vals.values()):
            continue
        for t, (v, _) in vals.items():
            if v is not None:
                max_peak[t] = max(max_peak.get(t, 0), v)
        m, l, g = (vals[t][0] for t in TOOLS)
        rows.append({"step": f"peak RSS {key} (MB)", "modelgit": fmt(m, unit="MB"), "git-lfs": fmt(l, unit="MB"),
                     "git-theta": fmt(g, unit="MB"), "theta/mg": ratio(g, False, m)[0],
                     "lfs/mg": ratio(l, False, m)[0], "target": f"mg <= {TARGET_PEAK_MB:g}",
                     "result": "n/a" if m is None else ("PASS" if m <= TARGET_PEAK_MB else "FAIL")})
    m, l, g = (max_peak.get(t) for t in TOOLS)
    tool_peak = {}
    for t in TOOLS:
        r = results.get(t)
        if r and r["steps"]:
            tool_peak[t] = max(v.get("peak_rss_without_git_mb", 0) for v in r["steps"].values())
    mt, lt_, gt_ = (tool_peak.get(t) for t in TOOLS)
    rows.append({"step": "peak RSS, max over steps (MB)", "modelgit": fmt(m, unit="MB"), "git-lfs": fmt(l, unit="MB"),
                 "git-theta": fmt(g, unit="MB"), "theta/mg": ratio(g, False, m)[0], "lfs/mg": ratio(l, False, m)[0],
                 "target": f"mg <= {TARGET_PEAK_MB:g}",
                 "result": "n/a" if m is None else ("PASS" if m <= TARGET_PEAK_MB else "FAIL")})
    rows.append({"step": "  same without git's own processes (MB)", "modelgit": fmt(mt, unit="MB"),
                 "git-lfs": fmt(lt_, unit="MB"), "git-theta": fmt(gt_, unit="MB"),
                 "theta/mg": ratio(gt_, False, mt)[0], "lfs/mg": ratio(lt_, False, mt)[0],
                 "target": "(information)", "result": ""})
    # stored bytes
    for key, label, targeted in (("git_dir", "stored: repo .git after sequence (MB)", True),
                                 ("bare_remote", "stored: bare remote after push (MB)", False)):
        vals = {t: (results.get(t) or {}).get("stored", {}).get(key) for t in TOOLS}
        if all(v is None for v in vals.values()):
            continue
        m, l, g = (None if vals[t] is None else vals[t] / MB for t in TOOLS)
        target, verdict = "", ""
        if targeted:
            target = f"mg <= {TARGET_STORED_VS_LFS:g} x lfs, < theta"
            checks = []
            if m is not None and l is not None:
                checks.append(m <= TARGET_STORED_VS_LFS * l)
            if m is not None and g is not None:
                checks.append(m < g)
            verdict = "n/a" if not checks else ("PASS" if all(checks) else "FAIL")
        rows.append({"step": label, "modelgit": fmt(m, unit="MB"), "git-lfs": fmt(l, unit="MB"),
                     "git-theta": fmt(g, unit="MB"), "theta/mg": ratio(g, False, m)[0],
                     "lfs/mg": ratio(l, False, m)[0], "target": target, "result": verdict})
    clone = {}
    for t in TOOLS:
        stored = (results.get(t) or {}).get("stored", {})
        if stored.get("clone_git_dir") is not None and stored.get("clone_checkout"):
            clone[t] = (stored["clone_git_dir"], stored["clone_checkout"])
    if clone:
        cells = {t: (fmt(clone[t][0] / MB, unit="MB") if t in clone else "n/a") for t in TOOLS}
        rows.append({"step": "clone: bytes received, its .git (MB)", **cells,
                     "theta/mg": "", "lfs/mg": "", "target": "(information)", "result": ""})
        ratios = {t: clone[t][0] / clone[t][1] for t in clone}
        m = ratios.get("modelgit")
        rows.append({"step": "clone: received / checked-out bytes (x)",
                     **{t: (f"{ratios[t]:.3f}" if t in ratios else "n/a") for t in TOOLS},
                     "theta/mg": "", "lfs/mg": "", "target": f"mg <= {TARGET_CLONE_RATIO:g}",
                     "result": "n/a" if m is None else ("PASS" if m <= TARGET_CLONE_RATIO else "FAIL")})
    # correctness
    names = ("checkout v1 == v1", "checkout main == v4", "clone == v4")
    cells = {}
    for t in TOOLS:
        r = results.get(t)
        if not r:
            cells[t] = "n/a"
            continue
        got = [r["checks"].get(n) for n in names]
        cells[t] = "/".join("ok" if v else ("n/a" if v is None else "BAD") for v in got)
    mg_ok = cells["modelgit"]
    rows.append({"step": "sha256 checkout v1 / main / clone", **cells, "theta/mg": "", "lfs/mg": "",
                 "target": "ok/ok/ok", "result": "n/a" if mg_ok == "n/a" else ("PASS" if mg_ok == "ok/ok/ok" else "FAIL")})
    return rows


def print_table(rows: list[dict]) -> str:
    cols = ["step", "modelgit", "git-lfs", "git-theta", "theta/mg", "lfs/mg", "target", "result"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |",
             "|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).ljust(widths[c]) for c in cols) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def environment(args, theta_version: str | None) -> dict:
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    try:
        import importlib.metadata as md
        modelgit_version = md.version("modelgit")
    except Exception:
        modelgit_version = None
    def source_state():  # modelgit's own checkout: which commit, and whether src/ had local edits
        top = os.path.dirname(HERE)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=top, capture_output=True,
                               text=True)
        if commit.returncode != 0:
            return None, None
        return commit.stdout.strip(), [line[3:] for line in dirty.stdout.splitlines()]

    commit, dirty = source_state()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "modelgit_commit": commit, "modelgit_src_modified": dirty,
            "machine": platform.machine(), "python": platform.python_version(),
            "git": version(["git", "--version"]), "git-lfs": version(["git", "lfs", "version"]),
            "git-theta": theta_version, "modelgit": modelgit_version,
            "mem_total_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="checkpoint size in MiB (default 1024)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ",".join(TOOLS))
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--workdir", help="where the temporary directory is created")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1200, help="per-step timeout in seconds (default 1200)")
    parser.add_argument("--idle-cores", type=float, default=0.3,
                        help="before each timed step, wait until the machine used at most this many "
                             "cores over one second (default 0.3) ...")
    parser.add_argument("--idle-wait", type=float, default=600,
                        help="... but at most this many seconds (default 600; 0: do not wait)")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-run a step that leaves no state (diff, clone) when other jobs used more "
                             f"than {NOISY_CORES:g} core while it ran, up to this many times (default 2)")
    parser.add_argument("--git-theta-venv", default=DEFAULT_VENV,
                        help=f"venv holding Git-Theta (created with {THETA_SPEC} if missing)")
    args = parser.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; choose among {', '.join(TOOLS)}")
    for exe in ("git", "git-lfs", "du", "sync"):
        if shutil.which(exe) is None:
            parser.error(f"{exe} is not on PATH")
    theta_version = ensure_git_theta(args.git_theta_venv) if "git-theta" in tools else None

    check_layout()
    root = tempfile.mkdtemp(prefix="modelgit-gitbench-", dir=args.workdir)
    say(f"working in {root}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    base_env.update(GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@example.com",
                    GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@example.com",
                    GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat", LC_ALL="C")
    results: dict = {}
    report = {"environment": environment(args, theta_version), "args": vars(args), "results": results}
    try:
        spec = model_spec(args.size_mb)
        data = os.path.join(root, "data")
        os.makedirs(data)
        versions = [os.path.join(data, f"v{i}.safetensors") for i in range(1, 5)]
        t0 = time.perf_counter()
        write_v1(versions[0], spec, args.seed)
        for i in range(2, 5):
            derive(versions[i - 2], versions[i - 1], spec, args.seed, i)
        shas = [sha256(v) for v in versions]
        size = os.path.getsize(versions[0])
        report["model"] = {"bytes": size, "tensors": len(spec),
                           "layers": sum(1 for n, _ in spec if n.endswith("q_proj.weight")),
                           "largest_tensor_bytes": max(math.prod(s) * 4 for _, s in spec),
                           "changed_in_v2": changed_tensor(spec), "sha256": shas}
        say(f"model: {size / MB:.0f} MB, {len(spec)} tensors; 4 versions written in "
            f"{time.perf_counter() - t0:.0f} s")
        for name in tools:
            tool = TOOL_CLASSES[name](root, args, base_env)
            say(f"{name}: {tool.diff_note}")
            results[name] = run_sequence(tool, versions, shas, args)
            if not args.keep:
                shutil.rmtree(tool.root, ignore_errors=True)
        rows = build_rows(results)
        say(f"model {size / MB:.0f} MB fp32, {len(spec)} tensors, {os.cpu_count()} CPUs; "
            "times in seconds, peak RSS summed over the command's process tree; * = other jobs used "
            f"more than {NOISY_CORES:g} core on average during the step")
        report["rows"] = rows
        report["table"] = print_table(rows)
        for name in tools:
            for line in results[name]["errors"]:
                print(f"{name}: {line}")
        failed = [r["step"] for r in rows if r["result"].startswith("FAIL")]
        print("targets missed: " + (", ".join(failed) if failed else "none"))
    finally:
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
