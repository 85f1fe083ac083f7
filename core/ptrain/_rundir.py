"""The run directory: created, replaced and locked so that nothing the user has is ever lost.

* A run directory carries a marker file (``.ptrain-run``). ``--overwrite`` replaces only a directory
  that is recognisably a ptrain run (the marker, or the ``recipe.resolved.toml`` + ``env.json`` of runs
  made before the marker) or an empty one — never the working directory, one of its parents, the home
  directory or ``/``.
* The run it replaces is moved aside (``.NAME.previous-PID`` beside it) and deleted only once the new
  run has started (training began, or it finished without training); if the new run fails before that,
  the old one is put back.
* A lock beside the run directory (``.NAME.lock``, an ``flock`` the kernel releases when the process
  dies, so a crashed run never leaves a stale lock) is held for the run's life: a second ``ptrain run``
  into the same directory is refused in one line naming the holder.
* Half-written artifacts of an interrupted run (``.model.partial-*``) are removed when it is resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ptrain._errors import PtrainError, UsageError

MARKER = ".ptrain-run"


class AlreadyFinished(PtrainError):
    """``--resume`` of a run that already finished: nothing to do, nothing changed."""


def is_run_directory(path: Path) -> bool:
    return (path / MARKER).is_file() or ((path / "recipe.resolved.toml").is_file() and (path / "env.json").is_file())


def is_finished(path: Path) -> bool:
    """A finished run: its metrics.json records the artifacts its export wrote."""
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and "artifacts" in metrics


def _protected(target: Path) -> str | None:
    """Why ``target`` may never be replaced, or None."""
    try:
        resolved, cwd, home = target.resolve(), Path.cwd().resolve(), Path.home().resolve()
    except (OSError, RuntimeError):
        return None
    if resolved == cwd or resolved in cwd.parents:
        return "it is the working directory or one of its parents"
    if resolved == home:
        return "it is the home directory"
    if resolved == Path(resolved.anchor):
        return "it is the root of the file system"
    return None


class RunDirectory:
    """``with RunDirectory(target, overwrite=…, resume=…) as folder:`` … ``folder.started()`` … .

    Only the main process of a distributed run uses it; the others write nothing.
    """

    def __init__(self, target: Path, *, overwrite: bool, resume: bool):
        self.target, self.overwrite, self.resume = target, overwrite, resume
        self.lock_path = target.parent / f".{target.name}.lock"
        self.aside: Path | None = None
        self.created = False
        self.existed_empty = False
        self._lock: Any = None
        self._started = False
        self.failed: Path | None = None
        """Where a run that failed before it started was moved, when it had replaced another."""

    # -------------------------------------------------------------- entering

    def __enter__(self) -> RunDirectory:
        target = self.target
        if target.exists() and not target.is_dir():
            raise UsageError(f"run directory {target} is a file; choose another path with --output-dir or output.dir")
        why = _protected(target)
        if why:  # checked before the lock, which lives in the target's parent
            raise UsageError(f"{target} cannot be a run directory: {why}; choose a run directory with --output-dir")
        self._take_lock()
        try:
            self._prepare()
        except BaseException:
            self._release_lock()
            raise
        return self

    def _prepare(self) -> None:
        target = self.target
        full = target.is_dir() and any(target.iterdir())
        if full and self.resume:
            if is_finished(target):
                raise AlreadyFinished(f"{target} holds a finished run; nothing to resume (start a new one with --overwrite or --output-dir)")
            self._remove_partials()
            return
        if full:
            if not self.overwrite:
                raise UsageError(
                    f"run directory {target} already exists; pass --overwrite to replace it, --resume to continue it, "
                    "or --output-dir to write elsewhere"
                )
            if not is_run_directory(target):
                raise UsageError(
                    f"--overwrite will not replace {target}: it holds files and is not a ptrain run directory; "
                    "choose another --output-dir (or empty it yourself)"
                )
            self.aside = target.with_name(f".{target.name}.previous-{os.getpid()}")
            target.rename(self.aside)  # kept until the new run has started
        self.existed_empty = target.is_dir()
        try:
            target.mkdir(parents=True, exist_ok=True)
            (target / MARKER).write_text("a ptrain run directory: --overwrite may replace it\n", encoding="utf-8")
        except (OSError, ValueError) as err:
            self._restore()
            raise UsageError(
                f"cannot create run directory {target} ({getattr(err, 'strerror', None) or err}); choose another --output-dir"
            ) from None
        self.created = True

    def _remove_partials(self) -> None:
        for leftover in [*self.target.rglob(".*.partial-*"), *self.target.rglob(".*.old-*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    # -------------------------------------------------------------- the lock

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run's life
        except OSError as err:
            raise UsageError(f"cannot create run directory {self.target} ({err.strerror or err}); choose another --output-dir") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UsageError(
                f"run directory {self.target} is in use by {holder}; wait for that run to end, or choose another --output-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"ptrain pid {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]})")
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        self._lock.close()
        self._lock = None

    # -------------------------------------------------------------- leaving

    def started(self) -> None:
        """The new run has started: the run it replaced is deleted now."""
        self._started = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def _restore(self) -> None:
        if self.aside is not None and not self.target.exists():
            self.aside.rename(self.target)
            self.aside = None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        try:
            if err is None:
                self.started()
            elif self.created and not self._started:
                if isinstance(err, (UsageError, KeyboardInterrupt)):
                    self._undo()  # nothing worth keeping: as if the run had never been asked for
                elif self.aside is not None:  # keep the failed run's log, and put the replaced run back
                    self.failed = self.target.with_name(f"{self.target.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
                    self.target.rename(self.failed)
                    self._restore()
                    err.ptrain_run_log = str(self.failed / "run.log")  # type: ignore[attr-defined]
        finally:
            self._release_lock()

    def _undo(self) -> None:
        """A run that failed before it started leaves things as they were."""
        if not self.existed_empty:
            shutil.rmtree(self.target, ignore_errors=True)
        else:  # a folder the user made stays, empty
            for child in self.target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        self._restore()
