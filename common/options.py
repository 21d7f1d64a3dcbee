"""Option tables: one record per flag drives the argparse CLI, YAML presets, type conversion and the README table.

Knows no model type: which options exist and which model types take a group is the registry's business.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from common.cli import Parser
from common.errors import ConfigError


class NumberError(argparse.ArgumentTypeError, ValueError):
    """A number outside its option's range (argparse prints it after the flag's name; the option table too).

    `got` says what was refused, for the option table's message."""

    def __init__(self, message: str, got: str):
        super().__init__(message)
        self.got = got


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """'>= 1', '> 0 and <= 1' or '' (no bounds)."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(bounds)


def _describe(kind: type, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    what = "an integer" if kind is int else "a finite number"
    bounds = _bounds(low, high, low_open, high_open)
    return what + (" " + bounds if bounds else "")


def _range_words(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """'in [0, 1)', 'at least 1', 'greater than 0', 'at most 5' or '' (no bounds), for 'must be ...'."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'greater than' if low_open else 'at least'} {low:g}"
    if high is not None:
        return f"{'less than' if high_open else 'at most'} {high:g}"
    return ""


def _parse_number(kind: type, value: Any) -> float | int:
    """int or finite float from a CLI string or a YAML scalar; ValueError otherwise (booleans are not numbers)."""
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        raise ValueError(value)
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(str(value).strip()) if not isinstance(value, int) else value
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(value)
    return out


def number(kind: type = float, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[Any], float | int]:
    """A converter (argparse `type=` and Option.kind) to a finite `kind` in [low, high]; NumberError says the range.

    low_open / high_open exclude the bound: number(float, 0, low_open=True) is "a finite number > 0".
    The converter's `must` ("in [0, 1]") and `kind_name` ("int" or "finite float") word the option table's message.
    """
    expected = _describe(kind, low, high, low_open, high_open)

    def convert(value: Any) -> float | int:
        try:
            out = _parse_number(kind, value)
        except (TypeError, ValueError, OverflowError):
            raise NumberError(f"expected {expected}, got {value!r}", repr(value)) from None
        if (low is not None and (out < low or (low_open and out == low))) or (
                high is not None and (out > high or (high_open and out == high))):
            raise NumberError(f"expected {expected}, got {value!r}", repr(value))
        return out

    convert.__name__ = expected
    convert.must = _range_words(low, high, low_open, high_open)  # type: ignore[attr-defined]
    convert.kind_name = "int" if kind is int else "finite float"  # type: ignore[attr-defined]
    return convert


def _count_words(min_items: int, max_items: int | None) -> str:
    """'exactly 2 values', 'at least 1 value', '2 to 4 values' or 'values'."""
    if max_items is not None and max_items == min_items:
        count, last = f"exactly {min_items}", min_items
    elif max_items is not None:
        count, last = f"{min_items} to {max_items}", max_items
    elif min_items:
        count, last = f"at least {min_items}", min_items
    else:
        return "values"
    return f"{count} value{'' if last == 1 else 's'}"


def number_list(kind: type = float, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, min_items: int = 0, max_items: int | None = None) -> Callable[[Any], list]:
    """A converter of "a,b,c" (or a YAML list) to a list of numbers, each checked as number() checks it, and
    between min_items and max_items of them; with min_items 0, '' and 'none' are the empty list."""
    item = number(kind, low, high, low_open=low_open, high_open=high_open)
    count = _count_words(min_items, max_items)
    expected = f"comma-separated values, each {item.__name__}" + ("" if count == "values" else f", {count}")

    def convert(value: Any) -> list:
        if isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value).strip()
            items = [] if min_items == 0 and text.lower() == "none" else [t for t in text.split(",") if t.strip()]
        else:
            raise NumberError(f"expected {expected}, got {value!r}", repr(value))
        try:
            out = [item(v) for v in items]
        except NumberError as err:
            raise NumberError(f"expected {expected}, got {value!r}", f"{err.got} in {value!r}") from None
        if len(out) < min_items or (max_items is not None and len(out) > max_items):
            raise NumberError(f"expected {expected}, got {value!r}", f"{len(out)} number{'' if len(out) == 1 else 's'}: {value!r}")
        return out

    convert.__name__ = expected
    convert.must = comma = count if count != "values" else "comma-separated values"  # type: ignore[attr-defined]
    if item.must:
        convert.must = f"{comma}, each {item.must}"  # type: ignore[attr-defined]
    convert.kind_name = f"a list of {item.kind_name}"  # type: ignore[attr-defined]
    return convert


def int_list(text: Any) -> list[int]:
    """'1,2,4' or [1, 2, 4] -> [1, 2, 4]; '' or 'none' -> []."""
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return []
    return [int(v) for v in text.split(",") if v.strip()]


def float_list(text: Any) -> list[float]:
    """Comma-separated floats ("0.0015,0.0205") or a list of numbers."""
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).split(",") if t.strip()]
    try:
        return [float(item) for item in items]
    except (TypeError, ValueError):
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def str_list(text: Any) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']; '' or 'none' -> []."""
    if isinstance(text, (list, tuple)):
        return [str(v).strip() for v in text if str(v).strip()]
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return []
    return [v.strip() for v in text.split(",") if v.strip()]


def flag_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Option:
    name: str
    kind: Callable[[Any], Any]
    default: Any
    help: str
    choices: Sequence[str] | None = None
    group: str = "run"
    aliases: tuple[str, ...] = ()


class OptionTable:
    """A fixed list of options (unique names) and what to do with them."""

    def __init__(self, options: Iterable[Option]):
        self.options: tuple[Option, ...] = tuple(options)
        self.by_name: dict[str, Option] = {}
        for opt in self.options:
            if opt.name in self.by_name:
                raise ValueError(f"option {opt.name} is defined twice")
            self.by_name[opt.name] = opt
        self.aliases = {alias: o.name for o in self.options for alias in o.aliases}

    def groups(self) -> dict[str, list[Option]]:
        """Options by group, in the order the groups first appear."""
        out: dict[str, list[Option]] = {}
        for opt in self.options:
            out.setdefault(opt.group, []).append(opt)
        return out

    def build_parser(self, description: str, group_titles: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
        parser = Parser(description=description, argument_default=argparse.SUPPRESS)
        parser.add_argument("--config", help="YAML file of options (keys are flag names); flags override it")
        for name, options in self.groups().items():
            group = parser.add_argument_group((group_titles or {}).get(name, name))
            for opt in options:
                default = "" if opt.default is None else f" (default: {opt.default})"
                names = [f"--{opt.name}", *(f"--{a}" for a in opt.aliases)]
                if opt.kind is flag_bool:
                    group.add_argument(*names, dest=opt.name, action=argparse.BooleanOptionalAction, help=opt.help + default)
                else:
                    group.add_argument(*names, dest=opt.name, type=str, help=opt.help + default, metavar=opt.name.upper())
        return parser

    def convert(self, name: str, value: Any, source: str) -> Any:
        """Convert a raw CLI/YAML value to the option's type, with an error naming where it came from."""
        opt = self.by_name.get(self.aliases.get(name, name))
        if opt is None:
            raise ConfigError(f"{source}: unknown option {name!r}")
        if value is None:
            if opt.default is None:
                return None
            raise ConfigError(self._refusal(opt, source, f"no value (leave {opt.name} out for the default {opt.default})"))
        try:
            out = opt.kind(value)
        except NumberError as err:
            raise ConfigError(self._refusal(opt, source, err.got)) from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: option {opt.name} expects {opt.kind.__name__}, got {value!r} ({err})") from None
        if opt.choices is not None and out not in opt.choices:
            raise ConfigError(f"{source}: option {opt.name} must be one of {list(opt.choices)}, got {out!r}")
        return out

    @staticmethod
    def _refusal(opt: Option, source: str, got: str) -> str:
        """'--dim must be at least 1 (option dim expects int), got '0'', or with `source` a --config file:
        '--config p.yaml: dim must be ...'."""
        where = source if source == f"--{opt.name}" else f"{source}: {opt.name}"
        must = getattr(opt.kind, "must", "")
        kind = getattr(opt.kind, "kind_name", opt.kind.__name__)
        if not must:
            return f"{where}: option {opt.name} expects {kind}, got {got}"
        return f"{where} must be {must} (option {opt.name} expects {kind}), got {got}"

    def load_yaml(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"--config {path}: not a text file (expected UTF-8 YAML)") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {path}: not valid YAML ({err})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path}: expected a mapping of option names to values")
        return {self.aliases.get(k, k): self.convert(k, v, f"--config {path}") for k, v in raw.items()}

    def parse(self, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
        """Defaults <- YAML <- CLI flags; config["explicit"] lists the options that were given."""
        args = vars(parser.parse_args(argv))
        explicit: dict[str, Any] = {}
        if "config" in args:
            explicit.update(self.load_yaml(args.pop("config")))
        explicit.update({k: self.convert(k, v, f"--{k}") for k, v in args.items()})
        config = {o.name: o.default for o in self.options}
        config.update(explicit)
        config["explicit"] = sorted(explicit)
        return config

    def markdown(self, group_titles: Mapping[str, str]) -> str:
        """The option tables of the README, one per group."""
        lines: list[str] = []
        for name, options in self.groups().items():
            lines += [f"**{name}** ({group_titles[name]})", "", "| flag | default | meaning |", "|---|---|---|"]
            if name == "run":
                lines.append("| `--config` |  | YAML file of options (keys are flag names); flags override it |")
            for opt in options:
                flag = f"`--{opt.name}`"
                if opt.kind is flag_bool:
                    flag += f" / `--no-{opt.name}`"
                flag += "".join(f" (`--{a}`)" for a in opt.aliases)
                default = "" if opt.default is None else (",".join(map(str, opt.default)) if isinstance(opt.default, list) else opt.default)
                meaning = opt.help + (f" ({' / '.join(opt.choices)})" if opt.choices and opt.name not in ("dataset", "model_type") else "")
                lines.append(f"| {flag} | {default} | {meaning} |")
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"
