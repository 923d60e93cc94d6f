"""Files written atomically and read safely: the only place erat touches bytes on disk.

Everything erat writes with ``torch.save`` holds only tensors, numbers, strings, lists and
dicts, so it loads with ``torch.load(..., weights_only=True)`` (:func:`load_file`). Files
are written to a temporary name in the same folder (``.<name>.<random>``) and renamed, so a
crash never leaves a half-written file under the real name; :func:`remove_temps` clears the
temporaries a killed process left behind. An ``OSError`` becomes one line naming the file
(:func:`erat.errors.os_problem`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from erat.errors import UserError, os_problem


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results private
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        interrupt = _behind(err, KeyboardInterrupt)  # (a signal inside torch.save's writer
        if interrupt is not None and interrupt is not err:  # surfaces as its RuntimeError)
            raise interrupt from None
        cause = _behind(err, OSError)  # torch.save wraps a failed write (disk full) too
        if cause is not None:
            raise os_problem(cause, f"write {path}") from err
        raise


def _behind(err: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The ``kind`` exception behind ``err`` (itself, or in its chain of causes), if any."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, kind):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` made atomic (temporary file + rename)."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def remove_temps(folder: Path, names: list[str]) -> list[Path]:
    """Delete the temporaries ``.<name>.*`` that an interrupted atomic write of one of
    ``names`` left in ``folder``; returns what was removed."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def load_file(path: Path, map_location: str | torch.device = "cpu", what: str = "erat file"
              ) -> Any:
    """``torch.load`` with ``weights_only=True``; a missing or corrupt file is a ``UserError``
    (``what`` names what the file should have been)."""
    return _load(Path(path), path, map_location, what)


def load_file_and_digest(path: Path, map_location: str | torch.device = "cpu",
                         what: str = "erat file") -> tuple[Any, str]:
    """:func:`load_file` and the file's SHA-256, from one read of the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise os_problem(err, f"read {path}") from err
    return _load(path, io.BytesIO(data), map_location, what), hashlib.sha256(data).hexdigest()


def _load(path: Path, source: Any, map_location: str | torch.device, what: str) -> Any:
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        with warnings.catch_warnings():  # (a pickle protocol torch did not write: said below)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # code or objects that weights-only loading refuses
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not found and "Unsupported operand" in str(e):  # not a pickle torch.save wrote
            raise UserError(f"cannot read {path}: not a file torch.save wrote; wanted a "
                            f"valid {what}") from e
        held = f"the Python object {found.group(1)}" if found else "pickled Python objects"
        raise UserError(f"cannot read {path}: not a valid {what}: it holds {held}, which erat "
                        "refuses to unpickle (weights_only=True: tensors only)") from e
    except RuntimeError as e:
        if "cuda" in str(e).lower():
            raise UserError(f"cannot load {path} on {map_location}: {str(e).splitlines()[0]}"
                            ) from e
        raise UserError(f"cannot read {path}: {_unreadable(what)}") from e
    except Exception as e:  # zip and other reader errors all mean the same to a user
        raise UserError(f"cannot read {path}: {_unreadable(what)}") from e


def _unreadable(what: str) -> str:
    return f"not a valid {what}, or a damaged one (torch.load cannot read it)"


def read_text(path: Path, what: str = "file") -> str:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what}")
    if not path.is_file():
        raise UserError(f"no such {what}: {path}")
    try:
        return path.read_text()
    except OSError as err:
        raise os_problem(err, f"read {path}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a text file") from err


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the later one silently
    won: a run with ``method: erm`` and then ``method: vat`` trained VAT under the name
    erm); a key a merge (``<<: *defaults``) brings may still be given again."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                first = f" (first on line {seen[key]})" if seen[key] != line else ""
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} given twice in one mapping{first}",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str = "YAML file") -> Any:
    """A YAML file's content; a syntax error or a key given twice in a mapping is one line
    naming the file and the line."""
    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506  (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UserError(f"{path}{where}: not valid YAML ({problem})") from err


def read_json(path: Path, what: str = "JSON file") -> Any:
    """A JSON file's content; a syntax error is one line naming the file."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {err.lineno}: not valid JSON ({err.msg})") from err


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_sha256(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> str:
    """SHA-256 of tensors' shapes, dtypes and bytes (the same on every machine)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def check_writable_file(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work is done: a folder in
    its place, a parent that is a file, or a folder where no file can be created (probed,
    :func:`probe_folder`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    probe_folder(_existing_folder(path.parent, path, flag), f"write {flag} {path}")


def check_writable_dir(path: Path, flag: str) -> None:
    """Refuse an output folder that cannot be created or written, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    probe_folder(_existing_folder(path, path, flag), f"write into {flag} {path}")


def probe_folder(folder: Path, what: str) -> None:
    """Create and remove an empty temporary file in ``folder`` (which exists; no folder is
    created): the test that files can be written there. Permission bits and ``os.access``
    can say yes where a write fails (as root: ``/sys``, ``/proc``, some network mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".erat-probe.", dir=folder)
    except OSError as err:
        if err.errno == errno.ENOENT:  # e.g. /proc: no file can be created there
            err = PermissionError(errno.EACCES, "no file can be created there")
        raise os_problem(err, what) from err
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)


def _existing_folder(start: Path, path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``start`` (itself included); a file there is the
    user's mistake."""
    while not start.exists():
        start = start.parent
    if not start.is_dir():
        raise UserError(f"{flag} {path}: {start} is a file, not a folder")
    return start
