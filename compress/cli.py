"""What every tool shares: user mistakes become one line on stderr and exit code 2.

Only ``UserError`` (and the machine refusing a write or read: full disk, read-only or missing
folders, permissions) is a user mistake; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

from compress.errors import UserError, one_line

USAGE_ERROR = 2
# OSErrors the user fixes on their side; anything else from the OS is unexpected and keeps its traceback
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT,
                       errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.EFBIG}


def describe_os_error(error: OSError) -> str:
    """``<file>: <what the OS said>``; e.g. ``runs/x/summary.json: No space left on device``."""
    name = error.filename if error.filename is not None else ""
    reason = error.strerror or one_line(error, limit=None)
    hint = {errno.ENOSPC: " (free some space, then run the same command again to resume)",
            errno.EROFS: " (the folder is read-only: pass --out on writable storage)",
            errno.EDQUOT: " (disk quota exceeded)",
            errno.EFBIG: " (larger than this process may write: raise `ulimit -f`, then run the same command "
                         "again to resume)"}.get(error.errno or 0, "")
    return f"{name}: {reason}{hint}" if name else f"{reason}{hint}"


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a ``UserError`` (bad recipe, missing data, wrong path) is reported without a traceback."""
    try:
        code = main()
    except UserError as error:
        _fail(one_line(error, limit=None))
    except OSError as error:
        if error.errno not in _ENVIRONMENT_ERRNOS:
            raise
        _fail(describe_os_error(error))
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _fail(message: str) -> None:
    # a user's text may carry terminal control characters (a recipe with ANSI escapes): never replay them
    safe = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
    print(f"error: {safe}", file=sys.stderr)
    sys.exit(USAGE_ERROR)
