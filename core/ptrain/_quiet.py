"""Library output a ptrain user can do nothing about, kept off the terminal by construction.

While a command that loads the libraries runs (``run``, ``chat``, ``data``, ``compare``), every log record
of a logger that is not ptrain's, and every Python warning (``logging.captureWarnings``), goes to one
router on the root logger: into ``run.log`` where a run directory exists, nowhere otherwise, and live to
the terminal only under ``--verbose``. No list of known noisy loggers: a library released tomorrow that
logs is routed the same way. Libraries that give their logger a terminal handler of its own
(transformers, datasets) have that handler set aside while the command runs; the router looks again at
each stage of a run, so a library imported late is caught too. A command also hands libraries a
standard error of its own (:func:`capture_terminal`): a handler a library creates during an import and
uses at once (torch's), and anything printed to ``sys.stderr``, becomes a record like any other, while
ptrain's consoles keep the terminal. The terminal shows ptrain's own lines, and at the end of a run one
line counting the library warnings that went to the log.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import IO

_TERMINAL_STREAMS = ("stderr", "stdout", "__stderr__", "__stdout__")


def is_ptrain_logger(name: str) -> bool:
    """ptrain's own lines: the ``ptrain`` logger and its children (plugins log through ``run.log``)."""
    return name == "ptrain" or name.startswith("ptrain.")


class LibraryRouter(logging.Handler):
    """The root logger's handler: records of every logger that is not ptrain's, to the sinks attached
    (a run's ``run.log``), counted; to the terminal as well when ``verbose``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sinks: list[logging.Handler] = []
        self.warnings = 0
        self.live: logging.Handler | None = None
        self._set_aside: list[tuple[logging.Logger, logging.Handler]] = []
        self._propagation: dict[logging.Logger, bool] = {}

    _busy = False

    def emit(self, record: logging.LogRecord) -> None:
        if is_ptrain_logger(record.name) or self._busy:
            return  # ptrain's own handlers show and file it (or a sink failed and reports it: not again)
        if record.levelno >= logging.WARNING:
            self.warnings += 1
        self._busy = True
        try:
            for sink in [*self.sinks, *([self.live] if self.live else [])]:
                if record.levelno >= sink.level:
                    sink.handle(record)
        finally:
            self._busy = False

    def text(self, line: str) -> None:
        """A line a library wrote to standard error, as a warning record of the logger ``stderr``."""
        self.handle(logging.LogRecord("stderr", logging.WARNING, "", 0, line, None, None))

    def show_live(self, verbose: bool, stream: IO[str] | None = None) -> None:
        """``--verbose``: library records to the terminal too, as they come, marked with their logger."""
        if verbose and self.live is None:
            terminal = sys.stderr.terminal if isinstance(sys.stderr, _LibraryStream) else sys.stderr
            self.live = logging.StreamHandler(stream or terminal)
            self.live.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
        elif not verbose:
            self.live = None

    def sweep(self) -> None:
        """Set aside the terminal handlers that loggers other than ptrain's brought along, and let their
        records reach the router. Cheap (a pass over the logger registry): called at every stage."""
        terminals = {id(s) for s in (getattr(sys, name, None) for name in _TERMINAL_STREAMS) if s is not None}
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger) or is_ptrain_logger(name):
                continue
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and id(getattr(handler, "stream", None)) in terminals:
                    logger.removeHandler(handler)
                    self._set_aside.append((logger, handler))
                    if logger not in self._propagation:
                        self._propagation[logger] = logger.propagate
                    logger.propagate = True

    def restore(self) -> None:
        """Give the libraries their handlers back (the command is over)."""
        for logger, handler in self._set_aside:
            logger.addHandler(handler)
        for logger, propagate in self._propagation.items():
            logger.propagate = propagate
        self._set_aside.clear()
        self._propagation.clear()


class _LibraryStream(io.TextIOBase):
    """What libraries see as ``sys.stderr`` while a command runs: each line becomes a router record."""

    def __init__(self, router: LibraryRouter, terminal: IO[str]):
        self.router, self.terminal, self._partial = router, terminal, ""
        self.rich_proxied_file = terminal  # ptrain's rich consoles (stderr=True) print to the terminal

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                self.router.text(line.rstrip())
        return len(text)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # faulthandler and friends want a real descriptor
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


_router: LibraryRouter | None = None


def route_library_output(verbose: bool | None = None) -> LibraryRouter:
    """Install the router once per process (later calls sweep again) and return it."""
    global _router
    if _router is None:
        _router = LibraryRouter()
        logging.getLogger().addHandler(_router)
        logging.captureWarnings(True)
    if verbose is not None:
        _router.show_live(verbose)
    _router.sweep()
    return _router


def capture_terminal() -> None:
    """For a command: ``sys.stderr`` becomes the router's stream, while ptrain's rich consoles keep the
    terminal (rich follows ``rich_proxied_file``). Only the CLI calls this; an embedding program's
    standard error is its own."""
    router = route_library_output()
    if not isinstance(sys.stderr, _LibraryStream):
        sys.stderr = _LibraryStream(router, sys.stderr)


def stop_routing() -> None:
    """Undo :func:`route_library_output` (for callers that embed ptrain and want their logging back)."""
    global _router
    if isinstance(sys.stderr, _LibraryStream):
        sys.stderr = sys.stderr.terminal
    if _router is not None:
        _router.restore()
        logging.getLogger().removeHandler(_router)
        logging.captureWarnings(False)
        _router = None


def quiet_libraries() -> LibraryRouter:
    """Route library output (above), and turn off the datasets/transformers progress bars (not log records:
    ptrain shows its own progress). Imports datasets and transformers."""
    router = route_library_output()
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
    router.sweep()  # transformers and datasets gave their loggers terminal handlers on import
    return router
