"""What every tool shares: user mistakes become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE_ERROR = 2


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a ValueError (bad recipe, missing data, wrong path) is reported without a traceback."""
    try:
        code = main()
    except (ValueError, FileNotFoundError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
