"""``prep --where EXPR``: a small, safe filter language over trajectory metadata (never ``eval``).

Grammar (keywords lower case; names are ``schema.METADATA_FIELDS`` and ``player``)::

    expr    := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | "(" expr ")" | test
    test    := NAME OP literal | NAME "in" "(" literal ("," literal)* ")" | NAME "is" ["not"] "null"
    OP      := == | != | < | <= | > | >=
    literal := a number (-12, 1500, 1.5e3) | a string in double quotes (JSON escapes)

Strings compare with string columns (format, agent, player), numbers with numeric ones. A missing
value (null) makes a comparison unknown, and a trajectory is kept only where the whole expression
is true (SQL's three-valued logic): ``rating < 1500`` and ``not rating >= 1500`` both drop a
trajectory without a rating; ``rating is null`` selects those. ``canonical`` gives the one text
of an expression (recorded in the manifest; spacing and redundant parentheses do not count).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from poke_rl.errors import PokeRLError
from poke_rl.schema import METADATA_FIELDS

COLUMNS = {**dict(METADATA_FIELDS), "player": "string"}
_OPS = ("==", "!=", "<=", ">=", "<", ">")
_TOKEN = re.compile(
    r'\s*(?:(?P<num>-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)|(?P<str>"(?:[^"\\]|\\.)*")'
    r"|(?P<op>==|!=|<=|>=|<|>)|(?P<punct>[(),])|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null"}

# ("or"|"and", left, right) | ("not", x) | ("cmp", name, op, value) | ("in", name, values)
# | ("null", name, is_null)
Node = tuple


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise _error(text, f"unexpected character {text[position:].lstrip()[:1]!r}")
        kind = match.lastgroup
        value: Any = match.group(kind)
        if kind == "num":
            value = float(value) if any(c in value for c in ".eE") else int(value)
        elif kind == "str":
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise _error(text, f"bad string {value}") from None
        tokens.append((kind, value))
        position = match.end()
    return tokens


def _error(text: str, why: str) -> PokeRLError:
    return PokeRLError(
        f"--where {orjson.dumps(text).decode()}: {why} (see README: prep --where; e.g. "
        '\'rating >= 1500 and format == "gen9randombattle"\')'
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, value: str | None = None) -> bool:
        if self.at >= len(self.tokens):
            return False
        kind, token = self.tokens[self.at]
        return value is None or (kind in ("name", "op", "punct") and token == value)

    def take(self, value: str) -> None:
        if not self.peek(value):
            found = repr(self.tokens[self.at][1]) if self.at < len(self.tokens) else "the end"
            raise _error(self.text, f"expected {value!r}, found {found}")
        self.at += 1

    def parse(self) -> Node:
        if not self.tokens:
            raise _error(self.text, "empty expression")
        node = self.expr()
        if self.at < len(self.tokens):
            raise _error(self.text, f"unexpected {self.tokens[self.at][1]!r}")
        return node

    def expr(self) -> Node:
        node = self.conjunction()
        while self.peek("or"):
            self.at += 1
            node = ("or", node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.peek("and"):
            self.at += 1
            node = ("and", node, self.negation())
        return node

    def negation(self) -> Node:
        if self.peek("not"):
            self.at += 1
            return ("not", self.negation())
        if self.peek("("):
            self.at += 1
            node = self.expr()
            self.take(")")
            return node
        return self.test()

    def test(self) -> Node:
        if self.at >= len(self.tokens) or self.tokens[self.at][0] != "name":
            found = repr(self.tokens[self.at][1]) if self.at < len(self.tokens) else "the end"
            raise _error(self.text, f"expected a column name, found {found}")
        name = self.tokens[self.at][1]
        if name not in COLUMNS:
            raise _error(self.text, f"unknown column {name!r} (columns: {', '.join(COLUMNS)})")
        self.at += 1
        if self.peek("is"):
            self.at += 1
            negated = self.peek("not")
            self.at += negated
            self.take("null")
            return ("null", name, not negated)
        if self.peek("in"):
            self.at += 1
            self.take("(")
            values = [self.literal(name)]
            while self.peek(","):
                self.at += 1
                values.append(self.literal(name))
            self.take(")")
            return ("in", name, tuple(values))
        if self.at >= len(self.tokens) or self.tokens[self.at][0] != "op":
            raise _error(self.text, f"expected a comparison after {name!r}")
        op = self.tokens[self.at][1]
        self.at += 1
        return ("cmp", name, op, self.literal(name))

    def literal(self, name: str) -> Any:
        if self.at >= len(self.tokens) or self.tokens[self.at][0] not in ("num", "str"):
            raise _error(self.text, f"expected a number or a \"string\" to compare {name!r} with")
        kind, value = self.tokens[self.at]
        wanted = "str" if COLUMNS[name] == "string" else "num"
        if kind != wanted:
            what = "a \"string\"" if wanted == "str" else "a number"
            raise _error(self.text, f"{name!r} is compared with {what}, got {orjson.dumps(value).decode()}")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise _error(self.text, f"{value} is outside the 64-bit integer range")
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            raise _error(self.text, f"{value} is not a finite number")
        self.at += 1
        return value


def parse(text: str) -> Node:
    """The syntax tree of ``text``; ``PokeRLError`` (one line) if it is not in the grammar."""
    if not isinstance(text, str):
        raise PokeRLError(f"--where must be text, got {type(text).__name__}")
    return _Parser(text).parse()


def _show(node: Node, parent: str = "or") -> str:
    kind = node[0]
    if kind in ("or", "and"):
        text = f"{_show(node[1], kind)} {kind} {_show(node[2], kind)}"
        return f"({text})" if parent == "not" or (parent == "and" and kind == "or") else text
    if kind == "not":
        return f"not {_show(node[1], 'not')}"
    if kind == "null":
        return f"{node[1]} is {'' if node[2] else 'not '}null"
    if kind == "in":
        return f"{node[1]} in ({', '.join(orjson.dumps(v).decode() for v in node[2])})"
    return f"{node[1]} {node[2]} {orjson.dumps(node[3]).decode()}"


def canonical(text: str | None) -> str | None:
    """The one text of an expression (None for no filter)."""
    return None if text is None else _show(parse(text))


def expression(text: str) -> Any:
    """``text`` as a ``pyarrow.compute.Expression`` over the Parquet's metadata columns."""
    import pyarrow.compute as pc

    def build(node: Node) -> Any:
        kind = node[0]
        if kind == "or":
            return build(node[1]) | build(node[2])
        if kind == "and":
            return build(node[1]) & build(node[2])
        if kind == "not":
            return ~build(node[1])
        column = pc.field(node[1])
        if kind == "null":
            return column.is_null() if node[2] else column.is_valid()
        if kind == "in":
            return column.isin(list(node[2]))
        op, value = node[2], node[3]
        return {"==": column == value, "!=": column != value, "<": column < value,
                "<=": column <= value, ">": column > value, ">=": column >= value}[op]  # fmt: skip

    return build(parse(text))
