"""YAML with locations: plain Python values plus the line of every key.

Validation works on plain dicts and lists; `Source.line(path)` tells where a key
path came from, so every config error can name file, line and key.
Variables (`${VAR}`, `${VAR:-default}`, `${file:NAME}`, `$$`) are expanded in string
values only, after parsing, so a variable can never change the YAML structure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the C loader is several times faster on a 10,000-check file
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

KeyPath = tuple[str | int, ...]

# Keys and list items one document may build. Aliases are expanded where they are
# used, so ten nested lists of ten aliases ("billion laughs") would build 10**9 of
# them; a 10,000-check config builds about 100,000.
MAX_NODES = 1_000_000

_VAR = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CRED_NAME = re.compile(r"[A-Za-z0-9_.@-]+")


class LocatedError(Exception):
    """An error at a key path; the config layer turns it into file:line."""

    def __init__(self, path: KeyPath, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.line = line


class MissingSecret(LocatedError):
    """A ${VAR} that is unset or a ${file:NAME} that does not exist. Inside a check it
    only skips that check (this machine lacks the key); elsewhere it is an error."""

    def __init__(self, path: KeyPath, message: str, line: int, needs: str) -> None:
        super().__init__(path, message, line)
        self.needs = needs


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Source:
    """A parsed YAML document and the line (1-based) of each key path."""

    name: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)  # values that came from variables
    # (service, check) -> what it needs that this machine lacks, e.g. "${OPENAI_API_KEY}"
    missing: dict[tuple[str, str], str] = field(default_factory=dict)

    def line(self, path: KeyPath) -> int:
        for i in range(len(path), -1, -1):
            if path[:i] in self.lines:
                return self.lines[path[:i]]
        return 1


def load(text: str, name: str, env: Mapping[str, str] | None = None) -> Source:
    """Parse YAML text. Raises LocatedError (with a line) on syntax errors."""
    env = os.environ if env is None else env
    src = Source(name=name, data=None)
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            src.data = {}
            return src
        src.lines[()] = node.start_mark.line + 1
        # A fresh constructor per load: SafeConstructor caches every node it builds.
        src.data = _build(node, (), src, env, yaml.constructor.SafeConstructor())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise LocatedError((), f"invalid YAML: {_yaml_problem(exc)}", mark.line + 1 if mark else 1) from None
    except yaml.reader.ReaderError as exc:
        # The C reader counts bytes of UTF-8; the line is the number of newlines before.
        line = text.encode("utf-8", "surrogatepass")[: exc.position].count(b"\n") + 1
        problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise LocatedError((), f"invalid YAML: {problem}", line) from None
    except yaml.YAMLError as exc:
        raise LocatedError((), f"invalid YAML: {exc}", 1) from None
    except RecursionError:
        raise LocatedError((), "invalid YAML: nested too deeply", 1) from None
    return src


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    if exc.context and exc.problem:  # "expected a single document", "but found another"
        return f"{exc.context}, {exc.problem}"
    return exc.problem or exc.context or "invalid YAML"


_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


def _build(
    node: yaml.Node, path: KeyPath, src: Source, env: Mapping[str, str],
    ctor: yaml.constructor.SafeConstructor, parents: frozenset[int] = frozenset(),
) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, path, src, env, ctor)
    if id(node) in parents:  # `a: &x [*x]`: an alias inside its own anchor
        raise LocatedError(path, "recursive YAML alias", node.start_mark.line + 1)
    if len(src.lines) > MAX_NODES:
        raise LocatedError(path, f"document too large (more than {MAX_NODES} keys and items; "
                           "aliases expanding?)", node.start_mark.line + 1)
    parents = parents | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:  # SafeConstructor cannot even build this key
                raise LocatedError((*path, "<<"), "YAML merge keys (<<) are not supported", line)
            key = key_node.value if key_node.tag == _STR_TAG else _construct(ctor, key_node, path)
            kpath = (*path, str(key))
            if not isinstance(key, str):
                raise LocatedError(kpath, f"keys must be strings, got {key!r}", line)
            if key == "<<":
                raise LocatedError(kpath, "YAML merge keys (<<) are not supported", line)
            if key in out:
                raise LocatedError(kpath, "duplicate key", line)
            src.lines[kpath] = line
            out[key] = _build(value_node, kpath, src, env, ctor, parents)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            src.lines[(*path, i)] = item.start_mark.line + 1
            items.append(_build(item, (*path, i), src, env, ctor, parents))
        return items
    return _scalar(node, path, src, env, ctor)


def _scalar(node: yaml.Node, path: KeyPath, src: Source, env: Mapping[str, str],
            ctor: yaml.constructor.SafeConstructor) -> Any:
    # A plain string is its own value (most scalars: keys, URLs, names).
    value = node.value if node.tag == _STR_TAG else _construct(ctor, node, path)
    if isinstance(value, str) and "$" in value:
        in_check = len(path) >= 4 and path[0] == "services" and path[2] == "checks"
        needs: list[str] | None = [] if in_check else None
        value = expand(value, env, path, node.start_mark.line + 1, src.secrets, needs)
        if needs:
            src.missing.setdefault((str(path[1]), str(path[3])), needs[0])
    return value


def _construct(ctor: yaml.constructor.SafeConstructor, node: yaml.Node, path: KeyPath) -> Any:
    """A scalar's value. The YAML constructors raise ValueError on values that look
    like a type but are not one (`2026-13-45`, an integer of 5,000 digits)."""
    try:
        return ctor.construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:
        line = node.start_mark.line + 1
        raise LocatedError(path, f"invalid value {node.value!r:.60}: {exc}", line) from None


def expand(
    value: str, env: Mapping[str, str], path: KeyPath, line: int, secrets: set[str],
    needs: list[str] | None = None,
) -> str:
    """Expand ${VAR}, ${VAR:-default}, ${file:NAME} and $$ in one string. With `needs`,
    an unavailable secret is recorded there (and stands in as a placeholder) instead
    of raising MissingSecret."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        try:
            return resolve(m.group(1))
        except MissingSecret as exc:
            if needs is None:
                raise
            needs.append(exc.needs)
            return "missing-secret"

    def resolve(expr: str) -> str:
        if expr.startswith("file:"):
            result = _read_credential(expr[5:], path, line)
        else:
            name, has_default, default = expr.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                raise LocatedError(path, f'invalid variable "${{{expr}}}"', line)
            if name in env:
                result = env[name]
            elif has_default:
                return default
            else:
                raise MissingSecret(
                    path,
                    f"environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)",
                    line,
                    f"${{{name}}}",
                )
        if result:
            secrets.add(result)
        return result

    out = _VAR.sub(sub, value)
    if "${" in _VAR.sub("", value):
        raise LocatedError(path, 'unclosed "${" (write $$ for a literal $)', line)
    return out


def _read_credential(name: str, path: KeyPath, line: int) -> str:
    if not _CRED_NAME.fullmatch(name):
        raise LocatedError(path, f'invalid credential name "{name}"', line)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise MissingSecret(
            path, f"${{file:{name}}} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)", line,
            f"${{file:{name}}}",
        )
    try:
        return (Path(directory) / name).read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise MissingSecret(path, f"cannot read credential {name}: {exc.strerror}", line,
                            f"${{file:{name}}}") from None
    except OSError as exc:
        raise LocatedError(path, f"cannot read credential {name}: {exc.strerror}", line) from None
    except UnicodeDecodeError:
        raise LocatedError(path, f"cannot read credential {name}: not UTF-8 text", line) from None
