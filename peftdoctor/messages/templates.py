"""Message templates read out of Python source: the part the catalogue generator and the tests share.

A template is the text of a `raise X(...)`, `warnings.warn(...)` or `logger.<level>(...)` message,
with every computed part (an f-string field, a `%s`, a `{}` of `.format`) replaced by a named hole
`{name}`; literal braces are doubled. `matcher()` turns one into a linear-time regex.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Union

LOG_LEVELS = frozenset({"warning", "warning_once", "warn", "error", "critical", "exception", "fatal", "info_once"})
HOLE_MAX = 240  # the longest value a hole may take: bounded, so a match is linear in the line length
MIN_LITERAL = 10  # a template whose longest literal run is shorter than this is too generic to match on

Part = Union[str, "Hole"]


@dataclass(frozen=True)
class Hole:
    name: str


@dataclass(frozen=True)
class Template:
    kind: str  # "raise ValueError", "warn", "log.warning"
    parts: tuple[Part, ...]
    file: str

    @property
    def text(self) -> str:
        return render(self.parts)


def render(parts: tuple[Part, ...]) -> str:
    return "".join(p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else "{" + p.name + "}"
                   for p in parts)


_HOLE_RE = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_]{0,60})\}")


def parse(text: str) -> tuple[Part, ...]:
    """The inverse of render()."""
    parts: list[Part] = []
    last = 0
    for m in _HOLE_RE.finditer(text):
        literal = text[last:m.start()] + (m.group(0)[0] if m.group(1) is None else "")
        _append(parts, literal)
        if m.group(1) is not None:
            parts.append(Hole(m.group(1)))
        last = m.end()
    _append(parts, text[last:])
    return tuple(parts)


def _append(parts: list[Part], literal: str) -> None:
    if not literal:
        return
    if parts and isinstance(parts[-1], str):
        parts[-1] += literal
    else:
        parts.append(literal)


def longest_literal(parts: tuple[Part, ...]) -> str:
    return max((p for p in parts if isinstance(p, str)), key=len, default="")


def anchor(parts: tuple[Part, ...]) -> str:
    """What a text must contain for the message to be there: the longest literal run of its first
    sentence (the part matcher() requires), lower-cased."""
    pieces = [piece for p in _first_sentence(parts)[0] if isinstance(p, str) for piece in p.split("`")]
    return max(pieces, key=len, default="").strip().lower()  # backquotes are optional in the matcher


def matcher(parts: tuple[Part, ...]) -> str:
    """A regex for the message: literal parts escaped, each run of holes one bounded lazy group that
    stays on its line, whitespace runs loose (pasted logs re-wrap lines). Linear: every repetition is
    bounded and no two repetitions can match the same characters back to back."""
    head, tail = _first_sentence(parts)
    if tail:  # pasted messages are often cut after their first sentence: the rest is optional
        return _optional_stop(_matcher(head, set())) + "(?:" + _matcher(tail, _names(head)) + ")?"
    return _optional_stop(_matcher(parts, set()))


def _optional_stop(regex: str) -> str:
    """A message's closing full stop is often dropped where it is quoted (an issue title, a log line)."""
    return regex[:-2] + r"\.?" if regex.endswith(r"\.") else regex


_SENTENCE_END = re.compile(r"\.\s")


def _first_sentence(parts: tuple[Part, ...]) -> tuple[tuple[Part, ...], tuple[Part, ...]]:
    seen = 0
    for i, part in enumerate(parts):
        if isinstance(part, str):
            end = _SENTENCE_END.search(part)  # ". " or ".\n": wrapped messages end their sentences with either
            at = end.start() if end else -1
            if at >= 0 and seen + at >= MIN_LITERAL:
                head = (*parts[:i], part[:at + 1])
                rest = part[at + 1:]
                return head, ((rest,) if rest else ()) + parts[i + 1:]
            seen += len(part)
    return parts, ()


def _names(parts: tuple[Part, ...]) -> set[str]:
    taken: set[str] = set()
    pending = False
    for part in parts:
        if isinstance(part, Hole) and not pending:
            _group_name(part.name, taken)
        pending = isinstance(part, Hole)
    return taken


def _matcher(parts: tuple[Part, ...], names: set[str]) -> str:
    out: list[str] = []
    pending: Optional[str] = None
    for part in parts:
        if isinstance(part, Hole):
            pending = pending or _group_name(part.name, names)
            continue
        if pending:
            out.append(f"(?P<{pending}>[^\\n]{{0,{HOLE_MAX}}}?)")
            pending = None
        out.append(_literal(part))
    if pending:  # a trailing hole: take the rest of the line (bounded)
        out.append(f"(?P<{pending}>[^\\n]{{0,{HOLE_MAX}}})")
    return "".join(out)


def _literal(text: str) -> str:
    """Whitespace runs loose; backquotes optional (Markdown renderings and retypings drop them)."""
    pieces = re.split(r"(\s+)", text)
    return "".join(r"\s{1,8}" if p.isspace() else re.escape(p).replace("`", "`?") for p in pieces if p)


def _group_name(raw: str, taken: set[str]) -> str:
    base = re.sub(r"\W+", "_", raw).strip("_")[:40] or "value"
    if base[0].isdigit():
        base = "v_" + base
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


# --------------------------------------------------------------------------- reading Python source


def module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "literal" assignments: peft spells file names this way (CONFIG_NAME)."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def templates_of(source: str, file: str, constants: dict[str, str]) -> Iterator[Template]:
    """Every message template in one module's source (a module that does not parse gives none)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for func in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
        assigned = _string_assignments(func)
        for node in _own_nodes(func):
            found = _message_call(node)
            if found is None:
                continue
            kind, arg = found
            parts = _parts(arg, assigned, constants)
            if kind.startswith("log.") and isinstance(node, ast.Call) and len(node.args) > 1 \
                    and all(isinstance(p, str) for p in parts):  # logger.warning("... %s ...", value)
                parts = _percent("".join(parts), ast.Tuple(elts=list(node.args[1:])))  # type: ignore[arg-type]
            if parts and any(isinstance(p, str) and p.strip() for p in parts):
                yield Template(kind, _merge(parts), file)


def _own_nodes(func: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function (or module) not inside a nested function: each call is read once."""
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _string_assignments(func: ast.AST) -> dict[str, ast.expr]:
    """msg = f"..." in this function: `raise ValueError(msg)` is how much of peft words its errors."""
    found: dict[str, ast.expr] = {}
    for node in _own_nodes(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if isinstance(node.value, (ast.JoinedStr, ast.Constant, ast.BinOp, ast.Call)):
                found.setdefault(node.targets[0].id, node.value)
    return found


def _message_call(node: ast.AST) -> Optional[tuple[str, ast.expr]]:
    if isinstance(node, ast.Assert) and node.msg is not None:
        return "assert", node.msg
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
        return f"raise {_name(node.exc.func)}", node.exc.args[0]
    if isinstance(node, ast.Call) and node.args:
        name = _name(node.func)
        collector = node.func.value if isinstance(node.func, ast.Attribute) and node.func.attr == "append" else None
        if isinstance(collector, ast.Name) and re.search(r"err|msg|message", collector.id, re.IGNORECASE):
            return "raise (collected)", node.args[0]  # error_msg.append(f"..."); raise ValueError(" ".join(error_msg))
        if name in ("warnings.warn", "warn"):
            return "warn", node.args[0]
        if isinstance(node.func, ast.Attribute) and node.func.attr in LOG_LEVELS and "log" in name.lower():
            return f"log.{node.func.attr}", node.args[0]
    return None


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _parts(node: ast.expr, assigned: dict[str, ast.expr], constants: dict[str, str], depth: int = 0) -> list[Part]:
    if depth > 4:
        return [Hole("value")]
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) else [Hole("value")]
    if isinstance(node, ast.JoinedStr):
        out: list[Part] = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.append(value.value)
            elif isinstance(value, ast.FormattedValue):
                out.extend(_field(value.value, assigned, constants, depth))
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _parts(node.left, assigned, constants, depth + 1) + _parts(node.right, assigned, constants, depth + 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant) \
            and isinstance(node.left.value, str):
        return _percent(node.left.value, node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str):
        return _dot_format(node.func.value.value, node)
    if isinstance(node, ast.Name):
        if node.id in constants:
            return [constants[node.id]]
        if node.id in assigned and assigned[node.id] is not node:
            return _parts(assigned[node.id], {k: v for k, v in assigned.items() if k != node.id}, constants, depth + 1)
        return [Hole(node.id)]
    return [Hole(_hole_name(node))]


def _field(node: ast.expr, assigned: dict[str, ast.expr], constants: dict[str, str], depth: int) -> list[Part]:
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    return [Hole(_hole_name(node))]


def _hole_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _hole_name(node.func)
    if isinstance(node, ast.Subscript):
        return _hole_name(node.value)
    return "value"


def _percent(fmt: str, right: ast.expr) -> list[Part]:
    args = right.elts if isinstance(right, ast.Tuple) else [right]
    out: list[Part] = []
    last, i = 0, 0
    for m in re.finditer(r"%(?:\([A-Za-z_]\w*\))?[-#0 +]*\d*(?:\.\d+)?[sdrfigxXeEc%]", fmt):
        out.append(fmt[last:m.start()])
        if m.group(0) == "%%":
            out.append("%")
        else:
            out.append(Hole(_hole_name(args[i]) if i < len(args) else "value"))
            i += 1
        last = m.end()
    out.append(fmt[last:])
    return out


def _dot_format(fmt: str, call: ast.Call) -> list[Part]:
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    out: list[Part] = []
    last, auto = 0, 0
    for m in re.finditer(r"\{\{|\}\}|\{([^{}]{0,60})\}", fmt):
        out.append(fmt[last:m.start()])
        last = m.end()
        if m.group(1) is None:
            out.append(m.group(0)[0])
            continue
        field = re.split(r"[.\[!:]", m.group(1), maxsplit=1)[0]
        if field == "":
            node = call.args[auto] if auto < len(call.args) else None
            auto += 1
        elif field.isdigit():
            node = call.args[int(field)] if int(field) < len(call.args) else None
        else:
            node = keywords.get(field)
        out.append(Hole(_hole_name(node) if node is not None else (field or "value")))
    out.append(fmt[last:])
    return out


def _merge(parts: list[Part]) -> tuple[Part, ...]:
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str):
            _append(merged, part)
        elif not (merged and isinstance(merged[-1], Hole)):  # adjacent holes are one hole to a matcher
            merged.append(part)
    return tuple(merged)
