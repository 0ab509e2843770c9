"""Loading a causal LM and its tokenizer from what the user has at hand.

``load_hf`` takes the built-in model (the default), a ``.gguf`` file, a model folder saved with
``save_pretrained``, a Hugging Face hub id, or a ``PreTrainedModel`` already in memory, and returns a
``LoadedModel``: the model in eval mode with its default attention implementation, its tokenizer, and
a name for reports. Every failure is a ``ModelLoadError`` that says what to do.

transformers is imported inside the functions that need it: importing it costs seconds. Before a hub id is
fetched, one TCP connection to the hub (``hub_reachable``, a few seconds at most) says whether it can be reached;
when not (offline, or ``HF_HUB_OFFLINE``), only the local cache is read, so an unknown name fails at once instead
of after the hub client's retries.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from spantrace.errors import ModelLoadError
from spantrace.loading import builtin
from spantrace.loading.builtin import DEFAULT_MODEL
from spantrace.loading.placement import dispatch_options
from spantrace.loading.processor import load_processor
from spantrace.offload import is_dispatched

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DEFAULT_MODEL", "LoadedModel", "clear_memo", "load_hf"]

logger = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0  # how long the reachability probe waits for the hub's host
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
GGUF_MAGIC = b"GGUF"
GGUF_MIN_HEADER_BYTES = 24  # magic, version, tensor count, metadata count
DTYPES_BY_NAME = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
# "name" or "owner/name": the shape of a hub id. Anything else with a separator is taken as a path.
HUB_ID_PATTERN = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
SOURCE_HELP = (
    "Pass nothing (the built-in model), a path to a .gguf file, a folder saved with save_pretrained "
    "(it holds config.json), a Hugging Face hub id, or a transformers PreTrainedModel."
)

T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM in eval mode, its tokenizer (None when none came with it) and its name for reports;
    processor: the image processor and template of a vision-language model, when its files have one."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    model_id: str
    processor: Any = None


# The built-in model per (dtype, device): a second load in the same process returns the same object.
_BUILTIN_MEMO: dict[tuple[torch.dtype, str], LoadedModel] = {}
_BUILTIN_MEMO_LOCK = threading.Lock()


def load_hf(
    source: str | os.PathLike[str] | PreTrainedModel | None = None,
    *,
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``source``: None or ``DEFAULT_MODEL`` for the built-in model; a ``.gguf`` file; a model folder with
    ``config.json``; a hub id (``"owner/name"``); or a ``PreTrainedModel``, used as is.
    ``tokenizer``: a tokenizer, or a path / hub id / ``DEFAULT_MODEL`` to load one; replaces the model's own.
    ``dtype``: None keeps float32 for files and the given model's dtype; else a torch dtype or its name.
    ``device``: None loads files onto the CPU and leaves a given model where it is.
    ``device_map``, ``max_memory``, ``offload_folder``: passed to ``from_pretrained`` for a folder or hub id, which
    then spreads the layers over devices, the CPU and the disk with accelerate (``spantrace.loading.placement``).
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    want_tokenizer = tokenizer is None
    dispatch = dispatch_options(device_map, max_memory, offload_folder, torch_device)
    if dispatch and (not isinstance(source, (str, os.PathLike)) or source == DEFAULT_MODEL):
        raise ModelLoadError(
            "device_map, max_memory and offload_folder apply to a model folder or hub id; dispatch a model object "
            "yourself (accelerate.dispatch_model or from_pretrained(device_map=...)) and pass it as is"
        )
    if source is None or (isinstance(source, str) and source == DEFAULT_MODEL):
        loaded = load_builtin(torch_dtype or torch.float32, torch_device or torch.device("cpu"))
    elif isinstance(source, (str, os.PathLike)):
        loaded = load_named(os.fspath(source), torch_dtype or torch.float32, want_tokenizer, dispatch)
        loaded = dataclasses.replace(loaded, model=place(loaded.model, None, torch_device))
    else:
        loaded = wrap_model(source, torch_dtype, torch_device)
    if tokenizer is not None:
        loaded = dataclasses.replace(loaded, tokenizer=load_tokenizer(tokenizer))
    return loaded


def clear_memo() -> None:
    """Forget the built-in models this process has loaded (the next load reads the disk cache)."""
    with _BUILTIN_MEMO_LOCK:
        _BUILTIN_MEMO.clear()


# --- options -------------------------------------------------------------------------------------------


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The floating-point torch dtype that ``dtype`` names (None stays None)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name not in DTYPES_BY_NAME:
            raise ModelLoadError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES_BY_NAME)}.")
        return DTYPES_BY_NAME[name]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ModelLoadError(f"dtype must be a floating-point torch.dtype or its name, not {dtype!r}.")


def resolve_device(device: torch.device | str | None) -> torch.device | None:
    """The torch device that ``device`` names (None stays None)."""
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as exc:
            raise ModelLoadError(f"Unknown device {device!r}: use e.g. 'cpu', 'cuda' or 'cuda:1'.") from exc
    raise ModelLoadError(f"device must be a torch.device or a string such as 'cpu', not {device!r}.")


def place(model: PreTrainedModel, dtype: torch.dtype | None, device: torch.device | None) -> PreTrainedModel:
    """``model`` cast to ``dtype`` and moved to ``device`` (None: leave as is), in eval mode."""
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        try:
            model = model.to(device)
        except Exception as exc:
            raise ModelLoadError(f"Could not move the model to {device} ({type(exc).__name__}: {exc}).") from exc
    return model.eval()


# --- sources -------------------------------------------------------------------------------------------


def load_builtin(dtype: torch.dtype, device: torch.device) -> LoadedModel:
    """The built-in model in ``dtype`` on ``device``, loaded once per process for each pair."""
    key = (dtype, str(device))
    with _BUILTIN_MEMO_LOCK:
        if key not in _BUILTIN_MEMO:
            model, tokenizer = builtin.load_builtin(dtype)
            _BUILTIN_MEMO[key] = LoadedModel(place(model, None, device), tokenizer, DEFAULT_MODEL)
        return _BUILTIN_MEMO[key]


def load_named(
    name: str, dtype: torch.dtype, want_tokenizer: bool, dispatch: dict[str, Any] | None = None
) -> LoadedModel:
    """A model from a string: a .gguf file, a model folder, or else a hub id (``dispatch``: from_pretrained's
    device_map, max_memory, offload_folder)."""
    path = local_path(name)
    if path.is_file():
        if dispatch:
            raise ModelLoadError(f"{path} is a GGUF file, which loads whole; device_map applies to model folders")
        return load_gguf(path, dtype, want_tokenizer)
    if path.is_dir():
        return load_folder(path, dtype, want_tokenizer, dispatch or {})
    return load_hub(name, dtype, want_tokenizer, dispatch or {})


def local_path(name: str) -> Path:
    """The local path ``name`` stands for; ModelLoadError if it looks like a path but does not exist."""
    if not name.strip():
        raise ModelLoadError(f"Empty model name. {SOURCE_HELP}")
    path = Path(name).expanduser()
    if not path.exists() and looks_like_path(name):
        raise ModelLoadError(f"No such file or folder: {path} (resolved to {path.absolute()}).")
    return path


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a path rather than a hub id.

    ``owner/name`` is read as a hub id even though it contains a '/': every namespaced hub id does.
    """
    if name.startswith((".", "~")) or name.lower().endswith(".gguf") or os.path.isabs(name):
        return True
    return HUB_ID_PATTERN.fullmatch(name) is None


def load_gguf(path: Path, dtype: torch.dtype, want_tokenizer: bool) -> LoadedModel:
    """A model, and the tokenizer stored beside it, from the GGUF file at ``path`` (dequantised)."""
    check_gguf_header(path)
    try:
        model = builtin.read_gguf_model(path, dtype)
    except Exception as exc:
        raise ModelLoadError(
            f"Could not load {path}: it is not a valid GGUF file (truncated or corrupt?) or holds a model "
            f"transformers cannot read from GGUF. Cause: {type(exc).__name__}: {exc}"
        ) from exc
    found = optional(lambda: builtin.read_gguf_tokenizer(path), str(path), want_tokenizer)
    return LoadedModel(model, found, str(path))


def check_gguf_header(path: Path) -> None:
    """Raise ModelLoadError unless the file at ``path`` starts like a GGUF file."""
    with path.open("rb") as stream:
        header = stream.read(GGUF_MIN_HEADER_BYTES)
    if header[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a valid GGUF file: it does not start with the bytes 'GGUF'. {SOURCE_HELP}")
    if len(header) < GGUF_MIN_HEADER_BYTES:
        raise ModelLoadError(f"{path} is not a valid GGUF file: it ends inside its header (truncated).")


def auto_class(source: str | Path, **options: Any) -> Any:
    """The transformers auto class to build ``source``'s model with: ``AutoModelForCausalLM``, or, for an
    image-text model, ``AutoModelForImageTextToText``: one that has no causal-LM class of its own (LLaVA,
    Qwen2.5-VL, Qwen3-VL), and one whose causal-LM class is its text stack alone while its config has a vision
    tower and an adapter takes the whole model (the Qwen3.5 wrappers: ``Qwen3_5ForCausalLM`` would drop the tower
    and read no image). A wrapper no adapter takes whole (Llama 4) stays its text stack, traced as text. A config
    that cannot be read leaves it to ``from_pretrained``'s own error."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    from spantrace.architectures.registry import supported_architectures

    try:
        config = AutoConfig.from_pretrained(source, **options)
    except Exception:  # from_pretrained says what is wrong with the folder or the id
        return AutoModelForCausalLM
    model_type = config.model_type
    image_text = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    # the files hold a vision tower, and an adapter reads the model with it (not only its text stack)
    with_tower = getattr(config, "vision_config", None) is not None and model_type in supported_architectures()
    if image_text and (model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or with_tower):
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def load_folder(
    path: Path, dtype: torch.dtype, want_tokenizer: bool, dispatch: dict[str, Any] | None = None
) -> LoadedModel:
    """A model, and its tokenizer if the folder has one, from a folder saved with ``save_pretrained``."""
    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        ggufs = sorted(child.name for child in path.glob("*.gguf"))
        hint = f" To load a GGUF file in it, pass its path, e.g. {path / ggufs[0]}." if ggufs else ""
        raise ModelLoadError(f"{path} is a folder without config.json, so not a model folder.{hint} {SOURCE_HELP}")
    try:
        model = auto_class(path).from_pretrained(path, dtype=dtype, **(dispatch or {}))
    except Exception as exc:
        raise ModelLoadError(f"Could not load the model in {path}: {type(exc).__name__}: {exc}") from exc
    found = optional(lambda: AutoTokenizer.from_pretrained(path), str(path), want_tokenizer)
    return LoadedModel(model, found, str(path), processor=image_processor_for(model, path))


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face hub can be reached: False under ``HF_HUB_OFFLINE`` or when its host refuses a TCP
    connection within ``timeout`` seconds; True behind a proxy (the probe cannot tell, the client will)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    from urllib.parse import urlparse

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:  # no route, refused, no DNS, or timed out
        return False


def load_hub(
    repo_id: str, dtype: torch.dtype, want_tokenizer: bool, dispatch: dict[str, Any] | None = None
) -> LoadedModel:
    """A model, and its tokenizer if it has one, from the Hugging Face hub (or its local cache; only that when
    the hub cannot be reached)."""
    from transformers import AutoTokenizer

    offline = not hub_reachable()
    try:
        auto = auto_class(repo_id, local_files_only=offline)
        model = auto.from_pretrained(repo_id, dtype=dtype, local_files_only=offline, **(dispatch or {}))
    except Exception as exc:
        if offline:
            raise ModelLoadError(
                f"Could not fetch {repo_id!r}: it is not in the Hugging Face cache and the hub cannot be reached "
                f"(offline); it is not a local file or folder either (looked in {Path.cwd()}). Pass a local model "
                "folder saved with save_pretrained or a .gguf file, or pass nothing to use the built-in model."
            ) from exc
        raise ModelLoadError(
            f"Could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). It is not "
            f"a local file or folder either (looked in {Path.cwd()}). Without hub access, pass a local model "
            "folder saved with save_pretrained or a .gguf file, or pass nothing to use the built-in model."
        ) from exc
    found = optional(lambda: AutoTokenizer.from_pretrained(repo_id, local_files_only=offline), repo_id, want_tokenizer)
    return LoadedModel(model, found, repo_id, processor=image_processor_for(model, repo_id))


def image_processor_for(model: PreTrainedModel, source: str | Path) -> Any:
    """The processor stored with a model that has a vision tower (its config has ``vision_config``); None for a
    text-only model or when the files hold none (pass ``processor=`` to ``spantrace.load`` then)."""
    if getattr(model.config, "vision_config", None) is None:
        return None
    return load_processor(source, model.config.model_type)  # without its video part when torchvision is missing


def wrap_model(model: Any, dtype: torch.dtype | None, device: torch.device | None) -> LoadedModel:
    """A ``PreTrainedModel`` the caller built, cast and moved only when asked, named from its config."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ModelLoadError(f"Cannot load a model from a {type(model).__name__}. {SOURCE_HELP}")
    architectures = model.config.architectures or [type(model).__name__]
    model_id = model.config._name_or_path or architectures[0]
    if is_dispatched(model):  # accelerate placed it: moving or casting it would break its hooks
        if dtype is not None and dtype != next(model.parameters()).dtype or device is not None:
            raise ModelLoadError(
                "this model was dispatched by accelerate (it has a device map or offload hooks), so spantrace does "
                "not move or cast it: leave out device= and dtype=, or dispatch it in the dtype you want"
            )
        return LoadedModel(model.eval(), None, model_id)
    return LoadedModel(place(model, dtype, device), None, model_id)


# --- tokenizers ----------------------------------------------------------------------------------------


def load_tokenizer(spec: str | os.PathLike[str] | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer ``spec`` is or names: itself, ``DEFAULT_MODEL``, a .gguf file, a folder or a hub id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(spec, PreTrainedTokenizerBase):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelLoadError(f"tokenizer must be a tokenizer or a path or hub id, not {type(spec).__name__}.")
    name = os.fspath(spec)
    if name == DEFAULT_MODEL:
        return load_builtin(torch.float32, torch.device("cpu")).tokenizer
    path = local_path(name)
    if path.is_file():
        check_gguf_header(path)
        return required(lambda: builtin.read_gguf_tokenizer(path), f"No tokenizer in {path}")
    if path.is_dir():
        return required(lambda: AutoTokenizer.from_pretrained(path), f"No tokenizer in {path}")
    hub_failure = f"Could not fetch the tokenizer {name!r} from the hub: pass a local folder or .gguf file"
    offline = not hub_reachable()  # then only the cache: no retries
    return required(lambda: AutoTokenizer.from_pretrained(name, local_files_only=offline), hub_failure)


def optional(load: Callable[[], T], where: str, wanted: bool = True) -> T | None:
    """``load()``, or None (logged) if it fails or is not ``wanted``: for tokenizers a model may lack."""
    if not wanted:
        return None
    try:
        return load()
    except Exception as exc:
        logger.info("No tokenizer in %s (%s: %s); continuing without one", where, type(exc).__name__, exc)
        return None


def required(load: Callable[[], T], message: str) -> T:
    """``load()``, with any failure turned into ModelLoadError(``message``) that names the cause."""
    try:
        return load()
    except Exception as exc:
        raise ModelLoadError(f"{message} ({type(exc).__name__}: {exc}).") from exc
