"""Files on disk: folders a script may write into, one writer per folder, writes a crash cannot leave half done, and
JSON read with a clear error. Every script writes through write_atomic and reads JSON through read_json.

write_atomic puts the new content in a temp file beside the old one, flushes it to the disk (fsync), then renames it
over the old file: a crash, a kill or a power cut at any moment leaves the old content or the new, never half of it.
write_folder does the same for a folder (an export). A write that fails (no space, a quota, a read-only disk, a
permission, an I/O error) leaves no temp file and becomes one line, a WriteError, naming the file, the cause and
what is intact.

lock_folder holds an operating-system lock on a folder's .lock file for as long as a run writes there. The system
drops it when the process ends in any way, SIGKILL and power cuts included, so it cannot go stale as a pid file can.
waiting_lock waits for such a lock instead, for work that one of several processes does first.
"""

import errno
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from configurator import DISK_FIXES, UsageError


def ensure_dir(path, key: str = "out_dir") -> Path:
    """Create a writable folder, or explain (naming the setting `key`) why it cannot be."""
    p = Path(path)
    try:
        # Path.exists() raises PermissionError (instead of returning False) inside a folder we may not enter.
        if p.exists() and not p.is_dir():
            raise UsageError(f"{key} '{path}' is a file, not a directory: choose another {key}")
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {key} '{path}': {e.strerror}; choose another {key} or fix its "
                         "permissions") from None
    if not os.access(p, os.W_OK):
        raise UsageError(f"{key} '{path}' is not writable: choose another {key} or fix its permissions")
    return p


LOCK_FILE = ".lock"  # in the locked folder; it also names the process holding the lock, for the message of another


@contextmanager
def lock_folder(path, key: str = "out_dir"):
    """Create the folder if need be and hold its lock until the with-block ends. If another process holds it, stop at
    once with one line naming the folder and that process, having changed nothing there."""
    folder = ensure_dir(path, key)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # an existing file is neither emptied nor changed
    try:
        if not try_lock(fd, folder):
            raise UsageError(f"{key} '{path}' is in use by another run ({holder_of(fd)}): wait for it to end, or "
                             f"choose another {key}")
        command = " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])
        holder = f"process {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: " \
                 f"{command}"
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode("utf-8"))
        yield folder
    finally:
        os.close(fd)  # releases the lock


def folder_in_use(path) -> str | None:
    """Who holds the folder's lock (as the lock file names them), or None if no one does. Changes nothing."""
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDWR)
    except OSError:
        return None  # no lock file: never locked
    try:
        return None if try_lock(fd, Path(path)) else holder_of(fd)
    finally:
        os.close(fd)


def try_lock(fd: int, where: Path) -> bool:
    """Take the exclusive lock on the open file fd without waiting: True if taken, False if another process holds it.
    flock on Linux and macOS; on Windows, msvcrt's lock of one byte past the holder's text, which others may read."""
    try:
        import fcntl
    except ImportError:
        import msvcrt
        os.lseek(fd, 1 << 20, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:  # a file system without locks (some network mounts): say so, and go on without one
        print(f"warning: cannot lock {where} ({e.strerror}): two runs started there at once would mix their files",
              file=sys.stderr)
        return True


def holder_of(fd: int) -> str:
    """What the lock file open at fd says about its holder."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1000).decode("utf-8", "replace").strip() or "a process that has not said which"
    except OSError:
        return "a process that has not said which"


@contextmanager
def waiting_lock(path):
    """Hold an exclusive lock on the file at path (created if need be) until the with-block ends, waiting while
    another process holds it: for work that one of several processes does (prepare_if_missing under torchrun).
    Where the system has no flock (Windows, some network mounts) it goes on without a lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            print(f"warning: cannot lock {path} ({e.strerror}): processes started at once may each do the work",
                  file=sys.stderr)
        yield
    finally:
        os.close(fd)  # releases the lock


class WriteError(UsageError):
    """A file that could not be written: what happened and what is intact (`what`), the fix (`fix`), and what to do
    then. A run (checkpoint.guard_writes) puts what its checkpoints hold and its resume command in that last part."""

    def __init__(self, what: str, fix: str, then: str):
        super().__init__(f"{what}. To go on, {fix} and {then}")
        self.what, self.fix = what, fix


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind e, if any: e itself, or what it was raised from or while handling (torch.save turns a
    failed write into a RuntimeError raised while handling the OSError)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def write_failure(path: Path, e: BaseException, size: int | None, then: str) -> WriteError | None:
    """The WriteError for e, an exception raised while writing path (size bytes, if known), or None if e is no
    failed write (a bug, a Ctrl-C: those go on as they are)."""
    cause = os_error_in(e)
    if cause is None and not (isinstance(e, RuntimeError) and "failed writing" in str(e)):
        return None  # torch's zip writer reports some failed writes as a RuntimeError of its own
    reason = (cause.strerror if cause is not None and cause.strerror else str(e).splitlines()[0])
    number = getattr(cause, "errno", None)
    if number in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free
        reason += f" ({megabytes(size)} to write, {megabytes(free)} free there)" if size else \
            f" ({megabytes(free)} free there)"
    kept = f"the previous {path.name} is untouched" if path.exists() else f"no {path.name} was written"
    return WriteError(f"could not write {path}: {reason}; {kept}", DISK_FIXES.get(number, f"check that {path.parent} "
                      "is writable"), then)


def write_atomic(path, content, then: str = "run the same command again", size: int | None = None) -> None:
    """Replace the file at path with content: bytes, text, or a function that writes into a binary file object
    (size: the bytes it writes, where known, for the message of a full disk).

    A full disk, a quota, a read-only disk, a permission or an I/O error removes the temp file and becomes one line
    (WriteError) that names the file and the cause, says the old file is untouched, and how to go on (`then`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if not callable(content):
        content = content.encode("utf-8") if isinstance(content, str) else content
        size = len(content)
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        failure = write_failure(path, e, size, then)
        if failure is None:
            raise
        raise failure from None
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_folder(path, fill, key: str = "output") -> Path:
    """Make the folder at path anew: fill(folder) writes into a temp folder beside it, which then takes its place
    (the old one is moved aside first and deleted last). A failed write removes the temp folder, leaves path as it
    was, and becomes one line (WriteError), as write_atomic's do."""
    path = ensure_dir(path, key)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for leftover in (tmp, old):  # from a write a crash cut short
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(path, e, None, "run the same command again")
        if failure is None:
            raise
        raise failure from None
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)
    return path


def write_json(path, data) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_json(path, fix: str) -> dict:
    """A JSON object from path, or one line naming the file, what is wrong with it and how to fix it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} not found: {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} cannot be read ({e}): {fix}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is corrupt (not valid JSON, line {e.lineno}: {e.msg}): {fix}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is corrupt (not a JSON object): {fix}")
    return data
