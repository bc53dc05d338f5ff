"""Data-driven extractors: a fact of an engine release is a file of its package plus a query.

A query is one of
  ``exists``   the file is in the release            -> True / False
  ``contains`` a regex matches the file's text       -> the label of the first case that matches,
               with the named group ``text`` (an error message, say) and the enclosing function;
               a case without a label takes ``text`` as the value (a version pin)
  ``assign``   the literal assigned to a name        -> the value (``X = (8, 16)``, ``X = Literal[8, 16]``,
               ``x: int = 16`` in a class body), with the enclosing class or function
A fact tries its cases in order, each case its paths in order (files move between releases), and records
where the first hit was found, so a table row can cite file and symbol. Nothing here imports the engine.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Case:
    label: Any  # the fact's value when this case hits; None: the value the query finds
    kind: str  # exists | contains | assign
    paths: tuple[str, ...]
    query: str = ""


@dataclass(frozen=True)
class Fact:
    cases: tuple[Case, ...]
    default: Any  # the value when no case hits (a feature the release does not have)


def _symbols(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every class and function, outermost first."""
    found: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((child.lineno, child.end_lineno or child.lineno, name))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def _parse(text: str) -> Optional[ast.AST]:
    try:
        return ast.parse(text)
    except SyntaxError:  # a release written for a newer Python than this one: regex facts still work
        return None


def _enclosing(tree: Optional[ast.AST], line: int) -> str:
    names = [name for first, last, name in (_symbols(tree) if tree else []) if first <= line <= last]
    return names[-1] if names else "<module>"


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Subscript):  # Literal[1, 8, 16]
        node = node.slice
    value = ast.literal_eval(node)
    return list(value) if isinstance(value, tuple) else value


def _assigned(tree: ast.AST, name: str) -> Optional[tuple[Any, int]]:
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return _literal(node.value), node.lineno
            except ValueError:
                continue
    return None


def _probe(case: Case, root: Path) -> Optional[dict[str, Any]]:
    """The hit of `case` in the release unpacked at `root`, or None."""
    for path in case.paths:
        file = root / path
        if case.kind == "exists":
            if file.exists():
                return {"value": case.label if case.label is not None else True, "where": path}
            continue
        if not file.is_file():
            continue
        text = file.read_text("utf-8", errors="replace")
        if case.kind == "contains":
            match = re.search(case.query, text)
            if match:
                line = text.count("\n", 0, match.start()) + 1
                where = f"{path} {_enclosing(_parse(text), line)}".replace(" <module>", "")
                if case.label is None:  # the value is what the regex captured (a version pin, say)
                    return {"value": match["text"], "where": where}
                hit = {"value": case.label, "where": where}
                if "text" in match.groupdict():
                    hit["text"] = match["text"]
                return hit
        elif case.kind == "assign":
            tree = _parse(text)
            found = _assigned(tree, case.query) if tree else None
            if found:
                return {"value": found[0] if case.label is None else case.label,
                        "where": f"{path} {_enclosing(tree, found[1])}".replace(" <module>", f" {case.query}")}
        else:
            raise ValueError(f"unknown query kind {case.kind!r}")
    return None


def extract(facts: dict[str, Fact], root: Path) -> dict[str, dict[str, Any]]:
    """Every fact of the release unpacked at `root`: {name: {"value", "where"?, "text"?}}."""
    result = {}
    for name, fact in facts.items():
        hit = next((h for h in (_probe(c, root) for c in fact.cases) if h is not None), None)
        result[name] = hit or {"value": fact.default}
    return result
