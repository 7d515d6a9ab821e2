"""Minimal, dependency-free reading and writing of `.safetensors` files as numpy.

The format is an 8-byte little-endian header length, a JSON header mapping each
tensor name to {dtype, shape, data_offsets}, then the raw bytes. Reading memory-
maps the file, so a multi-GB checkpoint is not copied until a tensor is used;
bfloat16 is supported through `ml_dtypes` (a JAX dependency).
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from mfjax.errors import UserError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(UserError):
  """A .safetensors file that cannot be read; the message names it."""


def read(path: str) -> dict[str, np.ndarray]:
  """All tensors of one file, as read-only memory-mapped numpy arrays."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise SafetensorsError(f"{path}: header length {n} exceeds the file size {size}")
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
      raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _DTYPES:
      raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    shape = tuple(info["shape"])
    if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or end > data.size:
      raise SafetensorsError(f"{path}: tensor {name!r} byte range {start}:{end} does not fit shape {shape}")
    out[name] = data[start:end].view(dtype).reshape(shape)
  return out


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Write tensors (contiguous copies are made as needed) to `path` atomically."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise SafetensorsError(f"tensor {name!r}: dtype {a.dtype} cannot be written to safetensors")
    header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())
  os.replace(tmp, path)
