"""Portable files: atomic writes, the trained-model file ``model.pt``, and :func:`load_model`.

Everything erat writes with ``torch.save`` holds only tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(..., weights_only=True)``. Files are written to a
temporary name in the same folder and renamed, so a crash never leaves a half-written
checkpoint or result behind.

``model.pt`` = ``{"state_dict": ..., "meta": {...}}`` where ``meta`` names the dataset,
model (with its keyword arguments, input shape, classes, normalisation) and the method
with its hyper-parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_FILE = "model.pt"


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results private to the writer
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` made atomic (temporary file + rename)."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; a missing or corrupt file is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and unpickler errors all mean the same to a user
        raise ValueError(f"cannot read {path}: not a valid erat file ({type(e).__name__})") from e


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_path(path: str | Path) -> Path:
    """``model.pt`` inside a run folder, or the file itself."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def save_model(model: nn.Module, meta: dict[str, Any], path: Path) -> None:
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_save({"state_dict": state, "meta": meta}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run folder (or a ``model.pt`` file), in eval mode.

    It takes inputs in ``[0, 1]`` (normalisation is its first layer) and returns logits.
    """
    from erat.models import build_model

    blob = load_file(model_path(path), map_location=device)
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise ValueError(f"{model_path(path)} is not an erat model file")
    meta = blob["meta"]
    model = build_model(
        meta["model"],
        in_shape=tuple(meta["in_shape"]),
        num_classes=meta["num_classes"],
        mean=meta["mean"],
        std=meta["std"],
        **meta.get("model_kwargs", {}),
    )
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def load_meta(path: str | Path) -> dict[str, Any]:
    return load_file(model_path(path))["meta"]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP or ``torch.compile`` wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
