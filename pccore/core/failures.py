"""How an error reaches the user. A pccore error (a problem the user can fix) is its own message. Any
other exception becomes one paragraph naming the command, the component or file involved, the exception's
type and message, and how to see the traceback: a failed allocation says what ran out, an OSError names
its file, and an exception raised in a plugin's code names the component, its kind and its distribution.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import traceback
from collections.abc import Iterator

from pccore.core.errors import PccoreError
from pccore.core.limits import allocation_failure


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while a stopping command records and reports how it stopped.

    A run that fails is often stopped a moment later as well: under a launcher, another process's failure
    makes the launcher send SIGTERM to this one, and a user may press Ctrl-C twice. Such a signal, arriving
    while run.json is being rewritten or the error printed, would cut the record short (the run stays marked
    "running") or end in a traceback. The command is stopping already, so a signal that arrives meanwhile
    is dropped; the first error is the one reported."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: None) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(signum, handler)


DEBUG_ENV = "PCCORE_DEBUG"
"""Set to 1 to see the traceback of any error (the same as `pccore --debug`)."""

_HOW_TO_DEBUG = f"run again with --debug (or {DEBUG_ENV}=1) to see the traceback"


_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@")


def hide_passwords(text: str) -> str:
    """`text` with the password of every URL in it (`scheme://user:password@host`) replaced by ***: a
    command line quoted in a message may hold a database URL (`pccore tune --storage postgresql://...`)."""
    return _PASSWORD.sub(r"\1***@", text)


def debug_from_env() -> bool:
    """Whether PCCORE_DEBUG asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(err: BaseException, limit: int = 300) -> str:
    """The exception's message on one line, at most `limit` characters, without the C++ backtrace that
    torch appends to some messages."""
    lines = []
    for line in str(err).splitlines():
        if line.startswith("Exception raised from "):
            break
        lines.append(line.strip())
    text = " ".join(line for line in lines if line)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception(err: BaseException) -> str:
    text = _first_line(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _pccore_frame(err: BaseException) -> str | None:
    """The innermost frame of the traceback in pccore's own code: `pccore.core.engine._sgd, line 226`."""
    for frame, lineno in reversed(list(traceback.walk_tb(err.__traceback__))):
        module = frame.f_globals.get("__name__", "")
        if module == "pccore" or module.startswith("pccore."):
            code = frame.f_code
            return f"{module}.{getattr(code, 'co_qualname', code.co_name)}, line {lineno}"
    return None


def describe_failure(err: BaseException, command: str, debug: bool = False) -> tuple[str, int]:
    """The message for an error that reached the top of `command`, and the exit status. With `debug` the
    traceback has been printed already, and the message points at it."""
    how_to_debug = "the traceback is printed above" if debug else _HOW_TO_DEBUG
    command = hide_passwords(command)
    if isinstance(err, PccoreError):
        return f"pccore: error: {err}", err.exit_code
    from pccore.core.registry import blame

    culprit = blame(err)
    origin = f" in {culprit.describe()}" if culprit is not None else ""
    ran_out = allocation_failure(err)
    if ran_out is not None:
        return (
            f"pccore: error: `{command}` ran out of memory{origin}: {ran_out}. Lower data.batch_size or "
            "data.eval_batch_size, the sizes or width in [model] or the dataset's image size, or use a device "
            f"with more memory; {how_to_debug}.",
            1,
        )
    if isinstance(err, OSError) and err.filename is not None:
        return (
            f"pccore: error: `{command}` failed{origin}: cannot use {err.filename}: "
            f"{err.strerror or _first_line(err)} ({type(err).__name__}); {how_to_debug}.",
            1,
        )
    if culprit is not None:
        return (
            f"pccore: error: `{command}` failed{origin}: {_exception(err)}. This is most likely a bug in that "
            f"plugin: report it to its authors with the traceback; {how_to_debug}.",
            1,
        )
    where = _pccore_frame(err)
    inside = f" ({where})" if where else ""
    return (
        f"pccore: error: `{command}` failed with an unexpected error in pccore{inside}: {_exception(err)}. "
        f"This is a bug in pccore: please report it with the traceback; {how_to_debug}.",
        1,
    )
