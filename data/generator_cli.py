"""The command line shared by the demo-data generators: --root, one option per parameter, --quiet."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from common.cli import Parser, run_main
from common.errors import ConfigError, DataError
from common.files import check_writable_output
from common.options import flag_bool, number


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
    parser = Parser(description=description)
    parser.add_argument("--root", required=True, help="folder to write (created; left alone if already complete)")
    names = [field.name for field in fields(config_type)]
    for name in names:
        default: Any = getattr(defaults, name)
        parser.add_argument(f"--{name}", type=option_type(default), default=default, help=helps.get(name))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(arguments: Sequence[str] | None) -> None:
        args = parser.parse_args(arguments)
        config = config_type(**{name: getattr(args, name) for name in names})
        check_config(config)
        check_writable_output(args.root, "--root", folder=True)
        print(generate(args.root, config, progress=not args.quiet))

    return run_main(run, argv)


def option_type(default: Any) -> Callable[[str], Any]:
    """The argparse type of a parameter with this default: a finite number for ints and floats."""
    if isinstance(default, bool):
        return flag_bool
    if isinstance(default, (int, float)):
        return number(type(default))
    return type(default)


def check_config(config: Any) -> None:
    """The config's own range checks, as a ConfigError naming the flag (its messages start with the parameter)."""
    validate = getattr(config, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except DataError as err:
        raise ConfigError(f"--{err}") from None
