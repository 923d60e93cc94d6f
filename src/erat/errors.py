"""The two kinds of failure a user can meet, and how the command line reports them.

- :class:`UserError`: something the user asked for is wrong (a flag, a config value, a file
  they named); one line, exit code 2. A subclass of ``ValueError``, so library callers can
  catch it as one.
- :class:`EnvironmentProblem`: the machine cannot do what was asked (no GPU, disk full,
  read-only folder); one line, exit code 1.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any


class UserError(ValueError):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


class EnvironmentProblem(RuntimeError):
    """The environment cannot do what was asked: printed as one line, exit code 1."""


def os_problem(err: OSError, what: str) -> Exception:
    """The one-line error for an ``OSError`` met while doing ``what`` (e.g. "write
    runs/a/model.pt"): disk full, read-only or permission problems are the environment's;
    a path that is a file where a folder was needed (or the reverse) is the user's."""
    import errno

    reason = err.strerror or type(err).__name__
    if err.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT,
                     errno.ENAMETOOLONG):
        return UserError(f"cannot {what}: {reason}")
    return EnvironmentProblem(f"cannot {what}: {reason}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like SIGINT: locks released, one line, a resume hint."""


@contextlib.contextmanager
def signals() -> Iterator[list[KeyboardInterrupt]]:
    """SIGINT and SIGTERM raised as ``KeyboardInterrupt`` and :class:`Terminated` (SIGTERM
    unwinds as SIGINT does) and recorded in the list yielded; the former handlers after. A
    signal the process was started ignoring (a job started in the background) stays ignored."""
    received: list[KeyboardInterrupt] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
        raise received[-1]

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
              if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield received
    finally:
        for s, h in before.items():
            if h is not None:  # (None: a handler installed from C, which cannot be put back)
                signal.signal(s, h)


def reported(e: BaseException, received: list[KeyboardInterrupt]) -> BaseException | None:
    """What the command line reports in one line for ``e``: a user's or the environment's
    error, or a signal, as itself. After a signal an error of any other kind is reported as
    the signal (an import interrupted half-way fails later as an ``ImportError``). None: a
    bug, or argparse's exit."""
    if isinstance(e, KeyboardInterrupt | UserError | EnvironmentProblem | OSError):
        return e
    return received[0] if received and isinstance(e, Exception) else None


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: ``erat: warning: ...`` on one line,
    without Python's source file and line."""
    print(f"erat: warning: {first_line(Warning(message))}", file=file or sys.stderr)


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def exit_code(e: BaseException, resume_hint: str = "") -> int:
    """What the command line prints for ``e`` (one line on stderr, none for a closed pipe)
    and the exit code: 2 for the user's mistake, 1 for the environment's, 130 and 143 for
    SIGINT and SIGTERM (``resume_hint`` appended), 141 for a reader that left
    (``erat ... | head``, as SIGPIPE would)."""
    if isinstance(e, BrokenPipeError):
        with contextlib.suppress(OSError, ValueError):  # (no flush into the closed pipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if isinstance(e, KeyboardInterrupt):
        word = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"erat: {word}" + (f"; {resume_hint}" if resume_hint else ""), file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    if isinstance(e, OSError):
        e = os_problem(e, f"use {e.filename}" if e.filename else "go on")
    print(f"erat: error: {first_line(e)}", file=sys.stderr)
    return 1 if isinstance(e, EnvironmentProblem) else 2
