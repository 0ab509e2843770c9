"""Where the layers of a model too big for one device go: the ``device_map``, ``max_memory`` and
``offload_folder`` that ``spantrace.load`` passes to transformers' ``from_pretrained`` (which hands them to
accelerate), checked up front so a mistake is one line, and read from the command line's text.

``device_map`` is a strategy (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``), one device for
everything (``"cpu"``, ``"cuda:0"``, ``0``), or a dict from module names to a device, ``"cpu"`` or ``"disk"``.
``max_memory`` caps each device: ``{0: "20GiB", "cpu": "60GiB"}``. ``offload_folder`` holds the weights of the
layers mapped to ``"disk"``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from spantrace.errors import ModelLoadError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_MAP_HELP = "use auto, balanced, balanced_low_0, sequential, cpu, a device such as cuda:0, or a JSON dict"
# A memory amount as accelerate reads it: a number of bytes, or a number with a unit (GiB, GB, MiB, MB, KiB, KB).
MEMORY_PATTERN = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B)?", re.IGNORECASE)


def dispatch_options(
    device_map: str | int | dict[str, Any] | None,
    max_memory: dict[Any, Any] | None,
    offload_folder: str | os.PathLike[str] | None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The keyword arguments for ``from_pretrained`` (empty when none is given), checked: ModelLoadError with one
    line for a device map that names no strategy or device, a memory cap that is not an amount, ``"disk"``
    without an offload folder, or ``device`` together with a device map."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ModelLoadError("max_memory and offload_folder need a device_map: add e.g. device_map='auto'")
        return {}
    if device is not None:
        raise ModelLoadError("give either device= (the whole model on one device) or device_map=, not both")
    options: dict[str, Any] = {"device_map": check_device_map(device_map)}
    if max_memory is not None:
        options["max_memory"] = check_max_memory(max_memory)
    if offload_folder is not None:
        options["offload_folder"] = os.fspath(offload_folder)
    mapped = options["device_map"]
    if isinstance(mapped, dict) and "disk" in mapped.values() and offload_folder is None:
        raise ModelLoadError("the device_map puts layers on 'disk': give offload_folder= (a folder for their weights)")
    return options


def check_device_map(device_map: Any) -> str | int | dict[str, Any]:
    """``device_map`` if it is a strategy, a device, or a dict of module names to devices; else ModelLoadError."""
    if isinstance(device_map, bool):
        raise ModelLoadError(f"device_map {device_map!r} is not a device map; {DEVICE_MAP_HELP}")
    if isinstance(device_map, (int, torch.device)):
        return device_map
    if isinstance(device_map, str):
        if device_map == "disk":
            raise ModelLoadError("device_map 'disk' puts every layer on disk; map only some layers to 'disk'")
        if device_map in STRATEGIES or _is_device(device_map):
            return device_map
        raise ModelLoadError(f"device_map {device_map!r} is not a device map; {DEVICE_MAP_HELP}")
    if isinstance(device_map, dict) and device_map:
        for name, where in device_map.items():
            ok = isinstance(name, str) and (
                (isinstance(where, int) and not isinstance(where, bool))
                or isinstance(where, torch.device)
                or (isinstance(where, str) and (where == "disk" or _is_device(where)))
            )
            if not ok:
                raise ModelLoadError(
                    f"device_map entry {name!r}: {where!r} is not a place: "
                    "give a device index, 'cpu', 'cuda:N' or 'disk'"
                )
        return dict(device_map)
    raise ModelLoadError(f"device_map {device_map!r} is not a device map; {DEVICE_MAP_HELP}")


def check_max_memory(max_memory: Any) -> dict[Any, Any]:
    """``max_memory`` if it maps devices (an index, ``"cpu"``, ``"cuda:N"``, ``"disk"``) to amounts; else one line."""
    if not isinstance(max_memory, dict) or not max_memory:
        raise ModelLoadError(
            f"max_memory must map devices to amounts, e.g. {{0: '20GiB', 'cpu': '60GiB'}}; got {max_memory!r}"
        )
    checked: dict[Any, Any] = {}
    for device, amount in max_memory.items():
        key: Any = int(device) if isinstance(device, str) and device.isdigit() else device
        if not (isinstance(key, int) or (isinstance(key, str) and (key in ("cpu", "disk", "mps") or _is_device(key)))):
            raise ModelLoadError(f"max_memory names {device!r}, which is not a device: use 0, 1, …, 'cpu' or 'disk'")
        if isinstance(amount, bool) or not (
            (isinstance(amount, int) and amount > 0) or (isinstance(amount, str) and MEMORY_PATTERN.fullmatch(amount))
        ):
            raise ModelLoadError(f"max_memory for {device!r} is {amount!r}: give bytes or an amount such as '20GiB'")
        checked[key] = amount
    return checked


def _is_device(text: str) -> bool:
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        return False
    return True


def _json_dict(text: str, option: str) -> Any:
    """The JSON value of ``option``'s text (a dict, when it is well formed); one line when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{option} is not valid JSON ({error.msg} at character {error.pos})") from error


def parse_device_map(text: str) -> str | int | dict[str, Any]:
    """The command line's ``--device-map``: a strategy, a device, or a JSON dict; checked like the API's."""
    text = text.strip()
    if text.startswith("{"):
        return check_device_map(_json_dict(text, "--device-map"))
    return check_device_map(int(text) if text.isdigit() else text)


def parse_max_memory(text: str) -> dict[Any, Any]:
    """The command line's ``--max-memory``: ``0=20GiB,cpu=60GiB`` or a JSON dict; checked like the API's."""
    text = text.strip()
    if text.startswith("{"):
        return check_max_memory(_json_dict(text, "--max-memory"))
    pairs: dict[Any, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device, separator, amount = item.partition("=")
        if not separator or not device.strip() or not amount.strip():
            raise ModelLoadError(f"--max-memory item {item!r} is not DEVICE=AMOUNT; write e.g. 0=20GiB,cpu=60GiB")
        pairs[device.strip()] = amount.strip()
    return check_max_memory(pairs)
