"""Python `re` answers in bounded time, for patterns read from untrusted adapter configs.

target_modules / exclude_modules strings, layers_pattern and rank_pattern / alpha_pattern keys are
regexes that peft runs with `re` against module names. A key like `(a+)+b` makes `re` backtrack for
minutes on a 40-character name; a pre-commit hook must not hang on it. So every such match goes
through `match` / `fullmatch` here, which pick one of two engines per pattern:

- `re` itself, when a bound on the paths a backtracking engine can take (`_paths`) stays small for
  this text: that is every pattern people write (`.*\\.(q|v)_proj`, `model\\.layers\\.\\d+\\.mlp`);
- otherwise a Pike VM (Thompson simulation with thread priorities, as RE2 does) over `re`'s own
  parse tree: time O(pattern x text), and the same answer and groups as `re` gives, because the
  threads are kept in the order `re` would try them.

Only what the VM cannot simulate and `re` cannot bound (a backreference, atomic group or possessive
repeat inside a nested repeat) raises `Unbounded`, a `re.error`, so callers treat it as a pattern
that cannot be judged.
"""
from __future__ import annotations

import re
import re._constants as C  # re's own opcodes: the parse tree is written in them
import re._parser as P
from functools import lru_cache
from typing import Callable, Optional, Union

MAX_STEPS = 1_000_000  # characters `re` may visit, at worst, before the VM is used instead (a few ms)
MAX_PROGRAM = 20_000  # VM instructions; counted repeats are unrolled
_INF = float("inf")

Groups = dict[Union[int, str], Optional[str]]


class Unbounded(re.error):
    """The pattern can be evaluated neither by the VM nor by `re` in bounded time."""

    def __init__(self, pattern: str, why: str) -> None:
        super().__init__(f"pattern {pattern!r} cannot be evaluated in bounded time ({why}); "
                         "peft itself may hang on it")


def fullmatch(pattern: str, text: str) -> bool:
    """bool(re.fullmatch(pattern, text)), in bounded time."""
    return _run(pattern, text, full=True) is not None


def match(pattern: str, text: str) -> Optional[Groups]:
    """The groups of re.match(pattern, text) ({0: whole, 1: ..., name: ...}), or None; bounded time."""
    return _run(pattern, text, full=False)


def _run(pattern: str, text: str, full: bool) -> Optional[Groups]:
    compiled = re.compile(pattern)  # raises re.error exactly where peft's re.* would
    if _backtracking_steps(pattern, len(text)) <= MAX_STEPS:
        found = (compiled.fullmatch if full else compiled.match)(text)
        return None if found is None else _groups(compiled, found.group)
    spans = _vm(_program(pattern).code, text, 0, len(text) if full else None, {})
    return None if spans is None else _groups(compiled, lambda g: _slice(text, spans, g))


def _groups(compiled: re.Pattern[str], group: Callable[[int], Optional[str]]) -> Groups:
    out: Groups = {g: group(g) for g in range(compiled.groups + 1)}
    out.update({name: out[index] for name, index in compiled.groupindex.items()})
    return out


def _slice(text: str, spans: list[Optional[int]], g: int) -> Optional[str]:
    if 2 * g + 1 >= len(spans):
        return None  # the group's save was never reached
    start, end = spans[2 * g], spans[2 * g + 1]
    return None if start is None or end is None else text[start:end]


@lru_cache(maxsize=4096)
def _backtracking_steps(pattern: str, length: int) -> float:
    # Each path a backtracking matcher can take visits at most length + 1 positions.
    return _paths(list(P.parse(pattern)), length) * (length + 1)


def _paths(items: list, n: int) -> float:
    """An upper bound on the paths a backtracking matcher takes through `items` on a text of length n:
    a sequence multiplies, an alternation adds, a repeat of a single-path body offers n+1 stopping points;
    a repeat whose body itself branches or repeats is exponential (infinite here)."""
    total = 1.0
    for op, av in items:
        if op is C.BRANCH:
            total *= sum(_paths(list(b), n) for b in av[1])
        elif op is C.SUBPATTERN:
            total *= _paths(list(av[3]), n)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            total *= _paths(list(av[1]), n)
        elif op is C.ATOMIC_GROUP:
            total *= _paths(list(av), n)
        elif op is C.GROUPREF_EXISTS:
            total *= _paths(list(av[1]), n) + (_paths(list(av[2]), n) if av[2] else 1)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            low, high, body = av
            inner = _paths(list(body), n)
            if high <= 1:
                total *= inner + 1
            elif inner > 1:
                return _INF
            else:
                total *= max(1, min(high, n) - low + 1) if high != C.MAXREPEAT else n + 1
        if total > MAX_STEPS:
            return _INF
    return total


# --- the VM -----------------------------------------------------------------------------------------
# Instructions: ("char", pred) consumes one char; ("split", a, b) tries a before b; ("jmp", a);
# ("save", slot); ("at", test) zero-width; ("look", ahead, negate, program, width); ("match",).

class _Program:
    def __init__(self) -> None:
        self.code: list[tuple] = []

    def emit(self, *ins: object) -> int:
        if len(self.code) >= MAX_PROGRAM:
            raise _TooBig
        self.code.append(ins)
        return len(self.code) - 1


class _TooBig(Exception):
    pass


@lru_cache(maxsize=256)
def _program(pattern: str) -> _Program:
    tree = P.parse(pattern)
    program = _Program()
    try:
        program.emit("save", 0)
        _compile(program, list(tree), tree.state.flags, pattern)
        program.emit("save", 1)
        program.emit("match")
    except _TooBig:
        raise Unbounded(pattern, "too large once its counted repeats are unrolled") from None
    return program


def _sub(items: list, flags: int, pattern: str) -> _Program:
    program = _Program()
    _compile(program, items, flags, pattern)
    program.emit("match")
    return program


def _compile(pg: _Program, items: list, flags: int, pattern: str) -> None:
    for op, av in items:
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            pg.emit("char", _predicate(op, av, flags))
        elif op is C.AT:
            pg.emit("at", _position(av, flags))
        elif op is C.BRANCH:
            _alternatives(pg, [list(b) for b in av[1]], flags, pattern)
        elif op is C.SUBPATTERN:
            group, add, remove, body = av
            if group is not None:
                pg.emit("save", 2 * group)
            _compile(pg, list(body), (flags | add) & ~remove, pattern)
            if group is not None:
                pg.emit("save", 2 * group + 1)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            _repeat(pg, av, op is C.MAX_REPEAT, flags, pattern)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            direction, body = av
            width = P.SubPattern(P.State(), list(body)).getwidth()[0] if direction < 0 else 0
            pg.emit("look", direction > 0, op is C.ASSERT_NOT, _sub(list(body), flags, pattern), width)
        else:  # GROUPREF*, ATOMIC_GROUP, POSSESSIVE_REPEAT: not a regular language / not simulated
            raise Unbounded(pattern, f"uses {op} inside a repeat that backtracks")


def _alternatives(pg: _Program, branches: list[list], flags: int, pattern: str) -> None:
    jumps = []
    for i, branch in enumerate(branches):
        if i < len(branches) - 1:
            split = pg.emit("split", 0, 0)
            pg.code[split] = ("split", split + 1, None)
            _compile(pg, branch, flags, pattern)
            jumps.append(pg.emit("jmp", None))
            pg.code[split] = ("split", split + 1, len(pg.code))
        else:
            _compile(pg, branch, flags, pattern)
    for j in jumps:
        pg.code[j] = ("jmp", len(pg.code))


def _repeat(pg: _Program, av: tuple, greedy: bool, flags: int, pattern: str) -> None:
    low, high, body = av
    for _ in range(low):
        _compile(pg, list(body), flags, pattern)
    if high == C.MAXREPEAT:
        loop = pg.emit("split", None, None)
        _compile(pg, list(body), flags, pattern)
        pg.emit("jmp", loop)
        pg.code[loop] = _choice(loop + 1, len(pg.code), greedy)
        return
    holes = []
    for _ in range(high - low):
        holes.append(pg.emit("split", None, None))
        _compile(pg, list(body), flags, pattern)
    for hole in holes:
        pg.code[hole] = _choice(hole + 1, len(pg.code), greedy)


def _choice(body: int, out: int, greedy: bool) -> tuple:
    return ("split", body, out) if greedy else ("split", out, body)


def _word(ch: str, flags: int) -> bool:
    return (ch.isalnum() or ch == "_") and (not flags & re.ASCII or ch.isascii())


_CATEGORIES: dict[object, Callable[[str, int], bool]] = {
    C.CATEGORY_DIGIT: lambda c, f: c.isdecimal() and (not f & re.ASCII or c.isascii()),
    C.CATEGORY_SPACE: lambda c, f: c in " \t\n\r\f\v" if f & re.ASCII else c.isspace(),
    C.CATEGORY_WORD: _word,
}
_NEGATED = {C.CATEGORY_NOT_DIGIT: C.CATEGORY_DIGIT, C.CATEGORY_NOT_SPACE: C.CATEGORY_SPACE,
            C.CATEGORY_NOT_WORD: C.CATEGORY_WORD}


def _folds(ch: str, flags: int) -> set[str]:
    return {ch, ch.lower(), ch.upper()} if flags & re.IGNORECASE else {ch}


def _in_class(items: list, ch: str, flags: int) -> bool:
    negate = bool(items) and items[0][0] is C.NEGATE
    hit = False
    for op, av in items[negate:]:
        for c in _folds(ch, flags):
            if op is C.LITERAL:
                hit = hit or ord(c) == av
            elif op is C.RANGE:
                hit = hit or av[0] <= ord(c) <= av[1]
            elif op is C.CATEGORY:
                hit = hit or (not _CATEGORIES[_NEGATED[av]](c, flags) if av in _NEGATED
                              else _CATEGORIES[av](c, flags))
    return hit != negate


def _predicate(op: object, av: object, flags: int) -> Callable[[str], bool]:
    if op is C.ANY:
        return (lambda ch: True) if flags & re.DOTALL else (lambda ch: ch != "\n")
    if op is C.IN:
        return lambda ch: _in_class(list(av), ch, flags)  # type: ignore[arg-type]
    wanted = chr(av)  # type: ignore[arg-type]
    negate = op is C.NOT_LITERAL
    return lambda ch: (bool(_folds(ch, flags) & _folds(wanted, flags))) != negate


def _position(at: object, flags: int) -> Callable[[str, int], bool]:
    multiline = bool(flags & re.MULTILINE)
    tests: dict[object, Callable[[str, int], bool]] = {
        C.AT_BEGINNING: lambda t, i: i == 0 or (multiline and t[i - 1] == "\n"),
        C.AT_BEGINNING_STRING: lambda t, i: i == 0,
        C.AT_END: lambda t, i: i == len(t) or (t[i] == "\n" and (multiline or i == len(t) - 1)),
        C.AT_END_STRING: lambda t, i: i == len(t),
        C.AT_BOUNDARY: lambda t, i: _edge(t, i, flags),
        C.AT_NON_BOUNDARY: lambda t, i: bool(t) and not _edge(t, i, flags),
    }
    return tests[at]


def _edge(text: str, i: int, flags: int) -> bool:
    before = i > 0 and _word(text[i - 1], flags)
    after = i < len(text) and _word(text[i], flags)
    return before != after


def _vm(code: list[tuple], text: str, start: int, end: Optional[int], memo: dict) -> Optional[list]:
    """Pike VM from `start`: the highest-priority thread reaching "match" (at `end` if given) wins,
    which is the path `re`'s backtracking would find first."""
    found: Optional[list] = None
    threads = _closure(code, text, start, [(0, (None,) * 2)], memo)
    pos = start
    while threads:
        advanced: list[tuple[int, tuple]] = []
        for pc, spans in threads:
            ins = code[pc]
            if ins[0] == "match":
                if end is None or pos == end:
                    found = list(spans)
                    break  # lower-priority threads can no longer win
            elif pos < len(text) and ins[1](text[pos]):
                advanced.append((pc + 1, spans))
        if pos >= len(text):
            break
        pos += 1
        threads = _closure(code, text, pos, advanced, memo)
    return found


def _closure(code: list[tuple], text: str, pos: int, seeds: list[tuple[int, tuple]], memo: dict) -> list:
    """Follow zero-width instructions from each seed in priority order; the first to reach a pc keeps it."""
    out: list[tuple[int, tuple]] = []
    seen: set[int] = set()
    for pc, spans in seeds:
        stack = [(pc, spans)]
        while stack:
            pc, spans = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            ins = code[pc]
            kind = ins[0]
            if kind == "jmp":
                stack.append((ins[1], spans))
            elif kind == "split":
                stack.append((ins[2], spans))
                stack.append((ins[1], spans))
            elif kind == "save":
                slot = ins[1]
                grown = spans + (None,) * (slot + 1 - len(spans)) if slot >= len(spans) else spans
                stack.append((pc + 1, grown[:slot] + (pos,) + grown[slot + 1:]))
            elif kind == "at":
                if ins[1](text, pos):
                    stack.append((pc + 1, spans))
            elif kind == "look":
                if _look(ins, text, pos, memo):
                    stack.append((pc + 1, spans))
            else:
                out.append((pc, spans))
    return out


def _look(ins: tuple, text: str, pos: int, memo: dict) -> bool:
    _, ahead, negate, program, width = ins
    key = (id(program), pos)
    if key not in memo:
        if ahead:
            memo[key] = _vm(program.code, text, pos, None, memo) is not None
        else:
            memo[key] = pos >= width and _vm(program.code, text, pos - width, pos, memo) is not None
    return memo[key] != negate
