"""A checker for the part of the CloudWatch Logs Insights query language the dashboard uses.

From the Logs Insights QL reference (docs.aws.amazon.com/AmazonCloudWatch/latest/logs/
CWL_AnalyzeLogData_LogsInsights.html): commands are separated by `|`; arithmetic operators
may be used "in the filter and fields commands and as arguments for other functions"; `stats`
takes aggregation functions (avg, count, count_distinct, max, min, pct, stddev, sum) and the
non-aggregation functions earliest, latest, sortsFirst, sortsLast, each optionally `as` a
name, grouped `by` fields or `bin(...)`. So `stats sum(a) + sum(b)` is not a query: the sum of
two aggregates is not an aggregation function. A dashboard's log widget starts its query with
`SOURCE 'log group'`. After `stats`, only its output names exist for `sort` and `display`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

COMMANDS = {"fields", "filter", "stats", "sort", "limit", "display", "parse", "dedup"}
STATS_FUNCTIONS = {
    "avg",
    "count",
    "count_distinct",
    "max",
    "min",
    "pct",
    "stddev",
    "sum",
    "earliest",
    "latest",
    "sortsFirst",
    "sortsLast",
}
TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<field>`[^`]+`)
    | (?P<number>\d+(?:\.\d+)?[a-z]*)
    | (?P<name>[@A-Za-z_][\w.@$-]*)
    | (?P<op>=~|!=|<=|>=|[=<>+\-*/^%(),\[\]|])
    )""",
    re.VERBOSE,
)
REGEX = re.compile(r"\s*(/(?:[^/\\]|\\.)+/)")
COMPARISONS = {"=", "!=", "<", ">", "<=", ">=", "=~"}


class QueryError(ValueError):
    pass


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        if tokens and tokens[-1][1] in ("=~", "like"):
            # After a match operator a `/` opens a regex, not a division.
            match = REGEX.match(text, position)
            if match:
                tokens.append(("regex", match.group(1)))
                position = match.end()
                continue
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise QueryError(f"cannot read the query at: {text[position : position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


@dataclass
class Parser:
    tokens: list[tuple[str, str]]
    position: int = 0
    aggregates_allowed: bool = False
    aggregates_seen: list[str] = field(default_factory=list)

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise QueryError(f"query ends where {expected or 'more'} was expected")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise QueryError(f"expected {expected!r}, found {token[1]!r}")
        self.position += 1
        return token

    def done(self) -> bool:
        return self.position >= len(self.tokens)

    # expression := or; arithmetic binds tighter than comparisons, comparisons than not/and/or
    def expression(self) -> str:
        kind = self.conjunction()
        while self.peek() == "or":
            self.take()
            kind = self.conjunction()
        return kind

    def conjunction(self) -> str:
        kind = self.negation()
        while self.peek() == "and":
            self.take()
            kind = self.negation()
        return kind

    def negation(self) -> str:
        if self.peek() == "not":
            self.take()
            return self.negation()
        return self.comparison()

    def comparison(self) -> str:
        kind = self.sum()
        if self.peek() in COMPARISONS or self.peek() in ("like", "in"):
            operator = self.take()[1]
            if operator == "in":
                self.take("[")
                while self.peek() != "]":
                    self.sum()
                    if self.peek() == ",":
                        self.take()
                self.take("]")
            else:
                self.sum()
            return "comparison"
        return kind

    def sum(self) -> str:
        kind = self.product()
        while self.peek() in ("+", "-"):
            self.take()
            self.product()
            kind = "arithmetic"
        return kind

    def product(self) -> str:
        kind = self.unary()
        while self.peek() in ("*", "/", "%", "^"):
            self.take()
            self.unary()
            kind = "arithmetic"
        return kind

    def unary(self) -> str:
        if self.peek() == "-":
            self.take()
            self.unary()
            return "arithmetic"
        return self.primary()

    def primary(self) -> str:
        kind, value = self.take()
        if value == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if kind == "name" and self.peek() == "(":
            return self.call(value)
        if kind in ("string", "number", "regex", "field", "name"):
            return kind
        raise QueryError(f"unexpected {value!r}")

    def call(self, name: str) -> str:
        aggregate = name in STATS_FUNCTIONS
        if aggregate and not self.aggregates_allowed:
            raise QueryError(f"{name}() is an aggregation: only `stats` may call it, at its top")
        self.take("(")
        allowed, self.aggregates_allowed = self.aggregates_allowed, False
        try:
            if name == "count" and self.peek() == "*":
                self.take()
            while self.peek() != ")":
                self.expression()
                if self.peek() == ",":
                    self.take()
        finally:
            self.aggregates_allowed = allowed
        self.take(")")
        if aggregate:
            self.aggregates_seen.append(name)
            return "aggregate"
        return "call"

    def alias(self) -> str | None:
        if self.peek() in ("as", "AS"):
            self.take()
            return self.take()[1]
        return None


def split_commands(query: str) -> list[str]:
    """Commands separated by `|` outside quotes and regexes."""
    parts, current, quote = [], "", ""
    for character in query:
        if quote:
            current += character
            quote = "" if character == quote else quote
        elif character in "'\"`":
            quote, current = character, current + character
        elif character == "|":
            parts.append(current.strip())
            current = ""
        else:
            current += character
    parts.append(current.strip())
    return parts


def check_query(query: str, *, dashboard: bool = True) -> None:
    """Raise QueryError where `query` leaves the documented syntax."""
    commands = split_commands(query)
    if dashboard:
        source = commands.pop(0)
        if not re.fullmatch(r"SOURCE\s+'[^']+'(\s+'[^']+')*", source):
            raise QueryError(f"a dashboard query starts with SOURCE 'log group', not {source!r}")
    if not commands:
        raise QueryError("no command after SOURCE")
    outputs: set[str] | None = None  # the names that exist once `stats` has run
    for command in commands:
        verb, _, rest = command.partition(" ")
        if verb not in COMMANDS:
            raise QueryError(f"unknown command {verb!r}")
        tokens = tokenize(rest)
        if verb == "stats":
            outputs = check_stats(tokens)
        elif verb in ("sort", "display", "dedup", "fields"):
            names = check_field_list(tokens, ordering=verb == "sort", aliases=verb == "fields")
            unknown = {n for n in names if outputs is not None and n not in outputs}
            if verb in ("sort", "display") and unknown:
                raise QueryError(f"{verb} after stats names {sorted(unknown)}, not stats output")
        elif verb == "filter":
            parser = Parser(tokens)
            parser.expression()
            if not parser.done():
                raise QueryError(f"filter has trailing {parser.peek()!r}")
        elif verb == "limit":
            if len(tokens) != 1 or tokens[0][0] != "number" or not tokens[0][1].isdigit():
                raise QueryError(f"limit takes one whole number, not {rest!r}")
        elif verb == "parse" and not tokens:
            raise QueryError("parse needs a field and a pattern")


def check_stats(tokens: list[tuple[str, str]]) -> set[str]:
    parser = Parser(tokens, aggregates_allowed=True)
    outputs: set[str] = set()
    while True:
        start = parser.position
        seen = len(parser.aggregates_seen)
        kind = parser.expression()
        if kind != "aggregate" or len(parser.aggregates_seen) != seen + 1:
            text = " ".join(value for _, value in tokens[start : parser.position])
            raise QueryError(f"stats takes one aggregation function per item, not {text!r}")
        alias = parser.alias()
        outputs.add(alias or "".join(value for _, value in tokens[start : parser.position]))
        if parser.peek() != ",":
            break
        parser.take()
    if parser.peek() == "by":
        parser.take()
        parser.aggregates_allowed = False
        while True:
            start = parser.position
            parser.expression()
            alias = parser.alias()
            outputs.add(alias or "".join(value for _, value in tokens[start : parser.position]))
            if parser.peek() != ",":
                break
            parser.take()
    if not parser.done():
        raise QueryError(f"stats has trailing {parser.peek()!r}")
    return outputs


def check_field_list(tokens: list[tuple[str, str]], *, ordering: bool, aliases: bool) -> list[str]:
    parser = Parser(tokens)
    names: list[str] = []
    while not parser.done():
        start = parser.position
        kind = parser.expression()
        if not aliases and kind not in ("name", "field"):
            raise QueryError("only field names here")
        if aliases:
            parser.alias()
        names.append(tokens[start][1].strip("`"))
        if ordering and parser.peek() in ("asc", "desc"):
            parser.take()
        if parser.peek() == ",":
            parser.take()
        elif not parser.done():
            raise QueryError(f"unexpected {parser.peek()!r}")
    return names
