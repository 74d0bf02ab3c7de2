"""Files on disk: folders a script may write into, writes a crash cannot leave half done, and JSON read with a clear
error. Every script writes through write_atomic and reads JSON through read_json.

write_atomic puts the new content in a temp file beside the old one, flushes it to the disk (fsync), then renames it
over the old file: a crash, a kill or a power cut at any moment leaves the old content or the new, never half of it.
"""

import errno
import json
import os
from pathlib import Path

from configurator import UsageError


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


def write_atomic(path, content, then: str = "run the same command again") -> None:
    """Replace the file at path with content: bytes, text, or a function that writes into a binary file object.

    A full disk (or any other write error) removes the temp file and becomes one line that says the old file is
    untouched, and how to go on (`then`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        # torch's zip writer reports a failed write of a large record as a RuntimeError
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "failed writing" in str(e)):
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            kept = f"the previous {path.name} is untouched" if path.exists() else f"no {path.name} was written"
            fix = ("free some disk space" if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                   else f"check that {path.parent} is writable")
            raise UsageError(f"could not write {path}: {reason}; {kept}. To go on, {fix} and {then}") from None
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
