"""The one `main` wrapper of every command-line program: user errors become one message and exit code 2."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from common.errors import UserError


def run_main(run: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None,
             cleanup: Callable[[], None] | None = None) -> int:
    """Call run(argv); a UserError (or a missing file) prints `error: ...` and returns 2, Ctrl-C 130, success 0."""
    try:
        run(argv)
    except (UserError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if cleanup is not None:
            cleanup()
    return 0
