"""The command line shared by the demo-data generators: --root, one option per parameter, --quiet."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.cli import run_main


def generator_main(
    argv: Sequence[str] | None,
    description: str,
    config_type: type,
    generate: Callable[..., Path],
    helps: Mapping[str, str] | None = None,
) -> int:
    """Parse --root, one --<field> per field of the dataclass `config_type` and --quiet, then run
    generate(root, config, progress=...) and print the folder; exit status 2 with one message on bad input.

    Options take their type and default from the fields' defaults; `helps` gives help texts by field name.
    """
    helps = helps or {}
    defaults = config_type()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="folder to write (created; left alone if already complete)")
    names = [field.name for field in fields(config_type)]
    for name in names:
        default: Any = getattr(defaults, name)
        parser.add_argument(f"--{name}", type=type(default), default=default, help=helps.get(name))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(arguments: Sequence[str] | None) -> None:
        args = parser.parse_args(arguments)
        config = config_type(**{name: getattr(args, name) for name in names})
        print(generate(args.root, config, progress=not args.quiet))

    return run_main(run, argv)
