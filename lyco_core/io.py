"""Reading adapter tensors and metadata, header-only when possible, and atomic writes.

safetensors layout: 8-byte little-endian header length N, N bytes of JSON ``{key: {dtype, shape, data_offsets}}``
plus ``__metadata__``, then the data. The header alone gives every key, dtype and shape, so inspecting a file never
reads its tensors. Pickle-based files are read only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AdapterError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pt2")
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """What the header says of one tensor."""

    dtype: str
    shape: tuple[int, ...]


_MAX_DIMS = 8  # adapter tensors have at most 5 (conv3d factors); more is a damaged or hostile header


def _whole(value) -> bool:
    """A JSON integer ≥ 0 (``True``/``False`` and floats are not)."""
    return type(value) is int and value >= 0


def _entry(path: Path, key: str, entry) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, start, end) of one header entry, or AdapterError saying which field is wrong."""

    def fail(problem: str, expected: str) -> AdapterError:
        return AdapterError(problem, file=str(path), key=key, expected=expected)

    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise fail("malformed header entry", "an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise fail(f"dtype {str(dtype)[:40]!r} is not a safetensors dtype", f"one of {', '.join(_DTYPE_SIZES)}")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_whole(d) for d in shape):
        raise fail(f"shape {str(shape)[:60]}", f"a list of at most {_MAX_DIMS} non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets):
        raise fail(f"data_offsets {str(offsets)[:60]}", "two non-negative integers [start, end]")
    return dtype, tuple(shape), offsets[0], offsets[1]


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """(metadata, {key: TensorInfo}) of a safetensors file, from its header alone. Checks what the safetensors
    format requires, so that the header-only path refuses every file a full load refuses: a JSON object of string
    metadata and entries with a known dtype, a shape of non-negative integers and byte ranges that match it and
    tile the data region exactly (no gap, no overlap, nothing after the last tensor)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise AdapterError(
                    "file is too short to be safetensors",
                    file=str(path),
                    expected="an 8-byte header length followed by a JSON header",
                )
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER, size - 8):  # its value is not quoted: it may be another file's bytes
                raise AdapterError(
                    f"the first 8 bytes are not the length of a JSON header inside this {size}-byte file",
                    file=str(path),
                    expected="a complete safetensors file (truncated or not safetensors?)",
                )
            header = json.loads(handle.read(header_len))
    except AdapterError:
        raise
    except OSError as exc:
        raise AdapterError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError, huge integers, deep nesting
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise AdapterError(
            f"header is not valid JSON ({problem})", file=str(path), expected="a safetensors file"
        ) from exc
    if not isinstance(header, dict):
        raise AdapterError("header is not a JSON object", file=str(path), expected="a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterError(
            "__metadata__ is not an object of strings", file=str(path), key="__metadata__", expected='{"name": "text"}'
        )
    infos: dict[str, TensorInfo] = {}
    data_len = size - 8 - header_len
    ranges = []
    for key, entry in header.items():
        dtype, shape, start, end = _entry(path, key, entry)
        if end > data_len or start > end:
            raise AdapterError(
                f"data ends at byte {end} but the file holds {data_len} data bytes",
                file=str(path),
                key=key,
                expected="a complete file (it looks truncated)",
            )
        numel = math.prod(shape)
        if numel * _DTYPE_SIZES[dtype] != end - start:
            raise AdapterError(
                f"{end - start} bytes for {dtype} of shape {list(shape)}",
                file=str(path),
                key=key,
                expected=f"{numel * _DTYPE_SIZES[dtype]} bytes",
            )
        ranges.append((start, end, key))
        infos[key] = TensorInfo(dtype, shape)
    covered = 0
    for start, end, key in sorted(ranges):
        if start != covered:
            raise AdapterError(
                f"data starts at byte {start}, where {covered} was expected",
                file=str(path),
                key=key,
                expected="tensors that tile the data region without gaps or overlaps",
            )
        covered = end
    if covered != data_len:
        raise AdapterError(
            f"{data_len - covered} bytes follow the last tensor",
            file=str(path),
            expected="a data region that ends with the last tensor",
        )
    return dict(metadata), infos


_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def load_shapes(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) from the header alone: every tensor is an empty ``meta`` tensor of the right shape and
    dtype, except scalars (alpha, on_input), which are read — so a summary never reads the big tensors."""
    path = Path(path)
    metadata, infos = read_header(path)
    tensors: dict[str, torch.Tensor] = {}
    scalars = [
        key for key, info in infos.items() if len(info.shape) == 0 or (len(info.shape) == 1 and info.shape[0] == 1)
    ]
    for key, info in infos.items():
        dtype = _TORCH_DTYPES.get(info.dtype)
        if dtype is None:
            raise AdapterError(f"unsupported dtype {info.dtype}", file=str(path), key=key, expected="a torch dtype")
        tensors[key] = torch.empty(info.shape, dtype=dtype, device="meta")
    if scalars:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in scalars:
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
            raise AdapterError(
                f"cannot decode tensors ({exc})", file=str(path), expected="a valid safetensors file"
            ) from exc
    return tensors, metadata


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors or weights-only-loadable pickle file, on the CPU."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path), {}
    metadata, _ = read_header(path)  # validates completeness with a clear message first
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, RuntimeError, ValueError) as exc:
        raise AdapterError(
            f"cannot decode tensors ({exc})", file=str(path), expected="a valid safetensors file"
        ) from exc
    return tensors, metadata


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError … for unsafe or broken files
        raise AdapterError(
            f"refused pickle file: it does not load with weights_only=True ({type(exc).__name__})",
            file=str(path),
            expected="a .safetensors file, or a pickle holding only tensors",
        ) from exc
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise AdapterError(
            "pickle file does not hold a flat {name: tensor} dict", file=str(path), expected="a state dict of tensors"
        )
    return {str(k): v for k, v in data.items()}


_TEMP_SUFFIX = ".tmp"


def _temp_name(target: Path) -> re.Pattern:
    """``.<name>.<pid>.<random>.tmp``: hidden, ignored by every loader list (no adapter suffix), and naming the
    process that writes it, so a later run can tell an orphan from a write in progress."""
    return re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+{re.escape(_TEMP_SUFFIX)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(target: Path) -> list[Path]:
    """Delete the temporary files an earlier write of ``target`` left behind when it was killed (SIGKILL leaves what
    no handler can clean): ours by name, and their writer gone. Returns what was removed."""
    pattern, removed = _temp_name(target), []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        found = pattern.fullmatch(sibling.name)
        if found and int(found.group(1)) != os.getpid() and not _alive(int(found.group(1))):
            try:
                sibling.unlink()
                removed.append(sibling)
            except OSError:
                pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, writer, *, overwrite: bool = False) -> Path:
    """Run ``writer(tmp_path)`` then rename onto ``path``; never leaves a partial file; refuses to overwrite unasked.
    The one temporary file is ours (see ``_temp_name``); orphans of killed earlier writes are removed first. OS
    errors (read-only folder, full disk, a file where a folder should be) become AdapterError with the reason."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AdapterError(
            "refusing to overwrite an existing file", file=str(path), expected="a new file name, or overwrite=True"
        )
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        writer(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise AdapterError(f"cannot write: {exc.strerror or exc}", file=str(path), expected="a writable place") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


_SAFETENSORS_CODES = {dtype: code for code, dtype in _TORCH_DTYPES.items()}


def write_safetensors_file(target: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
    """The safetensors format written straight into ``target`` (no second temporary file, unlike the library's
    ``save_file``): 8-byte header length, the JSON header padded with spaces to 8 bytes, the tensors' bytes in
    key order, flushed to disk."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _SAFETENSORS_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(target, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for key in sorted(tensors):
            handle.write(tensors[key].reshape(-1).view(torch.uint8).numpy())
        handle.flush()
        os.fsync(handle.fileno())


def save_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Atomically write ``tensors`` (made contiguous, on CPU) with string ``metadata``."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, lambda tmp: write_safetensors_file(tmp, clean, meta), overwrite=overwrite)
