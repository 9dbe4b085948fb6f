"""The raw Microsoft.Extensions.Configuration model: layered files and env vars as one tree.

.NET does not keep JSON types. Every provider flattens its source to ``path -> string`` pairs:
paths are ``:``-joined and compared without regard to case, arrays are objects keyed ``0``,
``1``, ... and numbers keep their source text. Providers are stacked and the last one that has a
key wins. kvassert copies that model so an ``appsettings.json`` means the same to both runtimes.
Each flat key is a tuple of lower-cased segments; the entry keeps the spelling as written.

Deliberate choices:

* JSON ``null`` becomes the empty string, as in .NET up to 9, and the settings layer reads an
  empty string as "not set". So a later layer can blank a value (``"ClientSecret": null`` in
  ``appsettings.Production.json``) but cannot delete an inherited subtree, just as in .NET.
* An empty object or array keeps its key with no value, so the section still "exists".
* The same path twice in one file (``ClientId`` and ``clientId``) is an error, because .NET's
  JSON provider refuses such a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import json5

from kvassert.errors import ConfigError

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """One flattened value: the path as written and its text (``None`` for an empty container)."""

    segments: Key
    value: str | None


Layer = dict[Key, Entry]


@dataclass(slots=True)
class ConfigNode:
    """A rebuilt configuration section: an optional value and case-insensitive children."""

    key: str
    value: str | None = None
    children: dict[str, ConfigNode] = field(default_factory=dict)

    def child(self, name: str) -> ConfigNode | None:
        return self.children.get(name.lower())


class _JsonObject(list[tuple[str, object]]):
    """An object's members in file order, duplicates kept, so they can be checked for clashes."""


def _raw_number(text: str, base: int = 10) -> str:
    # .NET keeps a number's source text; json5 passes ``base`` for hex literals.
    del base
    return text


_SYNTAX = re.compile(r"^<string>:(?P<line>\d+) (?P<what>.*) at column (?P<column>\d+)$", re.S)


def _syntax_error(origin: str, message: str) -> ConfigError:
    expected = "JSON (comments and trailing commas are allowed)"
    if message.startswith("Empty strings"):
        return ConfigError(origin, "an empty file", expected)
    match = _SYNTAX.match(message)
    if match is None:
        return ConfigError(origin, "text that is not valid JSON", expected)
    what = match["what"][:60]
    where = f"line {match['line']}, column {match['column']}"
    return ConfigError(origin, f"a syntax error at {where} ({what})", expected)


def read_json_file(path: Path) -> Layer:
    """Parse one appsettings file into a layer; any problem is a ``ConfigError`` naming it."""
    origin = str(path)
    try:
        # utf-8-sig: Visual Studio saves appsettings.json with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        found = f"bytes that are not UTF-8 at offset {exc.start}"
        raise ConfigError(origin, found, "UTF-8 text") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        found = f"a file that cannot be read ({reason})"
        raise ConfigError(origin, found, "a readable file") from None
    try:
        document = json5.loads(
            text,
            parse_int=_raw_number,
            parse_float=_raw_number,
            parse_constant=_raw_number,
            object_pairs_hook=_JsonObject,
        )
    except ValueError as exc:
        raise _syntax_error(origin, str(exc)) from None
    except RecursionError:
        raise ConfigError(origin, "nesting too deep to parse", "an appsettings file") from None
    if not isinstance(document, _JsonObject):
        found = "an array" if isinstance(document, list) else "a single value"
        raise ConfigError(origin, f"{found} at the top level", "a JSON object")
    return flatten(document, origin)


def settings_files(path: str | os.PathLike[str] | None, environment: str | None) -> list[Path]:
    """The files to read, in layering order: the base file, then its ``.{Environment}`` twin.

    A file named explicitly must exist; the base file found through a directory (or the current
    directory when ``path`` is ``None``) is optional, as in .NET's default host, because env vars
    may carry the whole configuration.
    """
    if path is None:
        base, required = Path("appsettings.json"), False
    else:
        try:
            given = Path(path)
        except TypeError:
            raise ConfigError("path", f"a {type(path).__name__}", "a file path") from None
        if given.is_dir():
            base, required = given / "appsettings.json", False
        else:
            base, required = given, True
    if required and not base.is_file():
        raise ConfigError(str(base), "no such file", "an appsettings JSON file")
    files = [base] if base.is_file() else []
    if environment:
        # appsettings.json -> appsettings.Production.json; a custom name follows the same rule.
        twin = base.parent / f"{base.stem}.{environment}{base.suffix}"
        if twin.is_file():
            files.append(twin)
    return files


def flatten(document: object, origin: str) -> Layer:
    """Flatten a parsed document (json5 output or plain Python containers) into a layer."""
    layer: Layer = {}
    # An explicit stack instead of recursion: a deeply nested mapping must not escape as a
    # RecursionError. Children are pushed in reverse so paths come out in document order.
    stack: list[tuple[tuple[str, ...], object]] = [((), document)]
    while stack:
        segments, value = stack.pop()
        members = _members(value, segments)
        if members is None:
            _put(layer, segments, _scalar_text(value, segments), origin)
        elif not members:
            if segments:
                _put(layer, segments, None, origin)
        else:
            for name, child in reversed(members):
                stack.append(((*segments, *name.split(":")), child))
    return layer


def _members(value: object, segments: Key) -> list[tuple[str, object]] | None:
    if isinstance(value, _JsonObject):
        return list(value)
    if isinstance(value, Mapping):
        pairs = list(value.items())
        for name, _ in pairs:
            if not isinstance(name, str):
                raise ConfigError(_join(segments), f"a key of type {type(name).__name__}", "str")
        return pairs
    if isinstance(value, (list, tuple)):
        return [(str(index), item) for index, item in enumerate(value)]
    return None


def _scalar_text(value: object, segments: Key) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    raise ConfigError(
        _join(segments),
        f"a Python {type(value).__name__}",
        "a JSON value (dict, list, str, int, float, bool or None)",
    )


def _put(layer: Layer, segments: Key, value: str | None, origin: str) -> None:
    key = tuple(segment.lower() for segment in segments)
    if key in layer:
        raise ConfigError(
            origin,
            f"the key {_join(segments)!r} more than once (keys are case-insensitive)",
            "each key once per file",
        )
    layer[key] = Entry(segments, value)


def environment_layer(env: Mapping[str, str], section: str) -> Layer:
    """The env vars under ``section``: ``AzureAd__ClientId`` and ``AzureAd:ClientId`` alike."""
    prefix = section_key(section)
    layer: Layer = {}
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            found = f"a {type(name).__name__} name with a {type(value).__name__} value"
            raise ConfigError("env", found, "str names and str values")
        # .NET's environment provider replaces every "__" with the ":" delimiter.
        segments = tuple(name.replace("__", ":").split(":"))
        key = tuple(segment.lower() for segment in segments)
        if key[: len(prefix)] == prefix:
            layer[key] = Entry(segments, value)
    return layer


def section_key(section: str) -> Key:
    return tuple(segment.lower() for segment in section.split(":"))


def merge(layers: Iterable[Layer]) -> Layer:
    """Later layers win key by key, as .NET's ConfigurationRoot does."""
    merged: Layer = {}
    for layer in layers:
        merged.update(layer)
    return merged


def build_section(merged: Layer, section: str) -> ConfigNode | None:
    """Rebuild the tree under ``section``; ``None`` when no layer has any key there."""
    prefix = section_key(section)
    root = ConfigNode(section)
    found = False
    for key, entry in merged.items():
        if key[: len(prefix)] != prefix:
            continue
        found = True
        node = root
        for segment in entry.segments[len(prefix) :]:
            node = node.children.setdefault(segment.lower(), ConfigNode(segment))
        node.value = entry.value
    return root if found else None


def _join(segments: Key) -> str:
    return ":".join(segments) or "(top level)"


_INDEX = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,9}\s*")


@dataclass(frozen=True, slots=True)
class Section:
    """A node read the way .NET's ConfigurationBinder reads one.

    ``path`` uses the canonical spelling of each key the caller asked for, so messages say
    ``AzureAd:ClientCredentials:0:KeyVaultUrl`` whatever case the file used. Reading a key that
    holds an object where a value is expected (or the reverse) is a ``ConfigError``.
    """

    node: ConfigNode
    path: str

    def at(self, key: str) -> str:
        return f"{self.path}:{key}"

    def require_object(self, expected: str) -> None:
        if self.node.value:
            # It might be a secret typed in the wrong place: describe it, never show it.
            found = f"a single value of {len(self.node.value)} characters"
            raise ConfigError(self.path, found, expected)

    def text(self, key: str) -> str | None:
        """The value at ``key``; empty (or JSON null) reads as not set."""
        node = self.node.child(key)
        if node is None:
            return None
        if node.children:
            names = ", ".join(sorted(child.key for child in node.children.values())[:5])
            raise ConfigError(self.at(key), f"an object with keys {names}", "a single value")
        return node.value or None

    def section(self, key: str, expected: str) -> Section | None:
        node = self.node.child(key)
        if node is None:
            return None
        child = Section(node, self.at(key))
        child.require_object(expected)
        return child

    def flag(self, key: str, *, default: bool) -> bool:
        """``true``/``false`` in any case: env vars are strings, JSON booleans arrive as text."""
        text = self.text(key)
        if text is None:
            return default
        word = text.strip().lower()
        if word not in ("true", "false"):
            raise ConfigError(self.at(key), shown(text), "true or false")
        return word == "true"

    def option(self, key: str, choices: tuple[str, ...], default: str) -> str:
        text = self.text(key)
        return default if text is None else choice(text, self.at(key), choices)

    def integer(self, key: str, *, default: int, low: int, high: int) -> int:
        text = self.text(key)
        if text is None:
            return default
        if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
            raise ConfigError(self.at(key), shown(text), f"an integer from {low} to {high}")
        return int(text)

    def entries(self) -> list[Section]:
        """Array entries in .NET's order: numeric keys ascending, gaps simply skipped."""
        for child in self.node.children.values():
            if not _INDEX.fullmatch(child.key):
                raise ConfigError(
                    self.at(child.key),
                    f"the key {child.key!r}",
                    f"array entries numbered 0, 1, ... (such as {self.path}:0:SourceType)",
                )

        def numeric(child: ConfigNode) -> tuple[int, str, str]:
            digits = child.key.lstrip("0") or "0"  # compared as text: no int() on huge indices
            return len(digits), digits, child.key

        ordered = sorted(self.node.children.values(), key=numeric)
        return [Section(child, self.at(child.key)) for child in ordered]

    def unknown(self, known: Iterable[str]) -> list[str]:
        """Paths of the keys not in ``known``: .NET ignores them, ``kvassert check`` warns."""
        folded = {key.lower() for key in known}
        children = self.node.children.values()
        return [self.at(child.key) for child in children if child.key.lower() not in folded]


def choice(text: str, path: str, choices: tuple[str, ...]) -> str:
    """Case-insensitive enum parsing, as .NET's binder does; returns the canonical spelling."""
    for candidate in choices:
        if text.strip().lower() == candidate.lower():
            return candidate
    raise ConfigError(path, shown(text), f"one of {', '.join(choices)}")


def shown(value: object) -> str:
    """A non-secret value for an error message: quoted, control characters escaped, bounded."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
