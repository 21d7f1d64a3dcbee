"""The one `main` wrapper of every command-line program: user errors become one message and exit code 2."""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Any, Callable, Sequence

from common.errors import Stopped, UserError

# Failures of the machine or the file system that the user can act on (a full disk, a read-only folder, ...).
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT,
                      errno.EISDIR, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EFBIG}


class Parser(argparse.ArgumentParser):
    """argparse with the toolkit's one-line error: `error: argument --flag: ...` and exit code 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` as an argparse type whose ValueError message argparse prints after the flag's name."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__
    return convert


def user_message(err: BaseException) -> str:
    """The message of a user error; one re-raised from a DataLoader worker is cut down to its original line."""
    text = str(err)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def run_main(run: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None,
             cleanup: Callable[[], None] | None = None) -> int:
    """Call run(argv); a UserError, a missing file or a full / read-only disk prints `error: ...` and returns 2,
    Ctrl-C (or SIGTERM, where the program turns it into KeyboardInterrupt) 130, success 0."""
    try:
        run(argv)
    except SystemExit as err:  # argparse: --help (0) or a bad flag, already explained (2)
        return err.code if isinstance(err.code, int) else 2
    except UserError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if not isinstance(err, FileNotFoundError) and err.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        return 128 + err.signum
    except KeyboardInterrupt:
        return 130
    finally:
        if cleanup is not None:
            cleanup()
    return 0
