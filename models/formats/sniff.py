"""What a network file is, by its first bytes (and a zip archive's member names), not its extension."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

ZIP = b"PK\x03\x04"
HDF5 = b"\x89HDF\r\n\x1a\n"
EXPORT = ('safetensors.torch.save_file(model.state_dict(), "model.safetensors") or '
          'torch.onnx.export(model, torch.zeros(1, 1, 28, 28), "model.onnx", dynamo=False)')


def sniff(path: str | Path) -> str:
    """One of: network-npz (written by this tool), npz (other arrays), safetensors, onnx, keras, h5,
    pytorch (a torch.save zip), pickle, unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(ZIP):
        return zip_kind(path)
    if head.startswith(HDF5):
        return "h5"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1:
        return "safetensors"
    if head[:1] == b"\x08":  # an ONNX ModelProto starts with field 1, ir_version, a varint
        return "onnx"
    return "unknown"


def zip_kind(path: str | Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any(name.endswith("data.pkl") for name in names):
        return "pytorch"
    if "config.json" in names and "model.weights.h5" in names:
        return "keras"
    if names and all(name.endswith(".npy") for name in names):
        return "network-npz" if "meta.npy" in names else "npz"
    return "unknown"
