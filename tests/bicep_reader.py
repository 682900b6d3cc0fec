"""A small structural reader for Bicep files, for tests that check what a template declares.

The Bicep CLI is not on these machines, and `pycep-parser` stops at current syntax (multi-line
expressions, comments inside expressions). This reader covers the language our templates use: `targetScope`,
`using`, decorated `param`/`var`/`resource`/`module`/`output` declarations, and expressions (objects, arrays,
`for` loops, interpolated and multi-line strings, calls, property access, `!`, ternaries, operators,
lambdas). It turns object and array literals into dicts and lists, and everything else into small nodes,
so that a test can walk a template as data. It checks structure; `az bicep build` in CI checks the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class BicepSyntaxError(ValueError):
    pass


# --- nodes ---
@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True)
class Interp:
    """An interpolated string: literal parts (str) and expressions, in order."""

    parts: tuple[Any, ...]


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Prop:
    target: Any
    name: str
    safe: bool = False


@dataclass(frozen=True)
class Index:
    target: Any
    index: Any


@dataclass(frozen=True)
class NonNull:
    target: Any


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Any


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class Ternary:
    condition: Any
    then: Any
    otherwise: Any


@dataclass(frozen=True)
class For:
    variables: tuple[str, ...]
    iterable: Any
    body: Any
    condition: Any = None


@dataclass(frozen=True)
class Lambda:
    params: tuple[str, ...]
    body: Any


@dataclass
class Declaration:
    kind: str  # param | var | resource | module | output
    name: str
    decorators: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    type: str | None = None  # param/output type; resource type@version; module path
    value: Any = None  # default, value or body (a For for loops)
    condition: Any = None  # `= if (condition) {...}`
    existing: bool = False

    @property
    def resource_type(self) -> str:
        return (self.type or "").split("@")[0]

    @property
    def api_version(self) -> str:
        return (self.type or "").split("@")[1]


@dataclass
class BicepFile:
    path: Path
    target_scope: str | None = None
    using: str | None = None
    declarations: list[Declaration] = field(default_factory=list)

    def of_kind(self, kind: str) -> dict[str, Declaration]:
        return {d.name: d for d in self.declarations if d.kind == kind}

    @property
    def params(self) -> dict[str, Declaration]:
        return self.of_kind("param")

    @property
    def variables(self) -> dict[str, Declaration]:
        return self.of_kind("var")

    @property
    def resources(self) -> dict[str, Declaration]:
        return self.of_kind("resource")

    @property
    def modules(self) -> dict[str, Declaration]:
        return self.of_kind("module")

    @property
    def outputs(self) -> dict[str, Declaration]:
        return self.of_kind("output")

    def resources_of_type(self, resource_type: str) -> list[Declaration]:
        return [d for d in self.resources.values() if d.resource_type == resource_type]

    def walk(self, node: Any) -> Any:
        """Every node under `node`, depth first, going on into the variables it refers to."""
        seen: set[str] = set()

        def visit(node: Any) -> Any:
            for inner in walk(node):
                yield inner
                if isinstance(inner, Ref) and inner.name in self.variables and inner.name not in seen:
                    seen.add(inner.name)
                    yield from visit(self.variables[inner.name].value)

        return visit(node)

    def resolve(self, node: Any) -> Any:
        """Follow references to variables (and to parameters' defaults) until a value that is not one."""
        seen: set[str] = set()
        while isinstance(node, Ref) and node.name not in seen:
            seen.add(node.name)
            declaration = self.variables.get(node.name) or self.params.get(node.name)
            if declaration is None or declaration.value is None:
                return node
            node = declaration.value
        return node


# --- tokens ---
@dataclass(frozen=True)
class Token:
    kind: str  # name, number, string, istring (interpolated), mstring, op, newline, eof
    value: Any
    line: int


_OPERATORS = ["=>", "==", "!=", "<=", ">=", "&&", "||", "??", ".?", "=~", "!~", *"{}[]().,:?!=<>+-*/%@"]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\d+")
_CLOSING = {"{": "}", "[": "]", "(": ")"}


def tokenize(text: str) -> list[Token]:  # noqa: C901 - one state machine reads best whole
    tokens: list[Token] = []
    brackets: list[str] = []  # newlines count only directly inside { } and [ ] and at the top level
    i, line = 0, 1
    while i < len(text):
        c = text[i]
        if c == "\n":
            if not brackets or brackets[-1] in "{[":
                tokens.append(Token("newline", "\n", line))
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise BicepSyntaxError(f"line {line}: unterminated comment")
            line += text.count("\n", i, end)
            i = end + 2
        elif text.startswith("'''", i):
            end = text.find("'''", i + 3)
            if end < 0:
                raise BicepSyntaxError(f"line {line}: unterminated multi-line string")
            tokens.append(Token("mstring", text[i + 3 : end].removeprefix("\n"), line))
            line += text.count("\n", i, end)
            i = end + 3
        elif c == "'":
            token, i = _string(text, i, line)
            tokens.append(token)
        elif match := _NAME.match(text, i):
            tokens.append(Token("name", match.group(), line))
            i = match.end()
        elif match := _NUMBER.match(text, i):
            tokens.append(Token("number", int(match.group()), line))
            i = match.end()
        else:
            op = next((op for op in _OPERATORS if text.startswith(op, i)), None)
            if op is None:
                raise BicepSyntaxError(f"line {line}: unexpected character {c!r}")
            if op in ("{", "[", "("):
                brackets.append(op)
            elif op in ("}", "]", ")") and (not brackets or _CLOSING[brackets.pop()] != op):
                raise BicepSyntaxError(f"line {line}: unbalanced {op!r}")
            tokens.append(Token("op", op, line))
            i += len(op)
    if brackets:
        raise BicepSyntaxError(f"unclosed {brackets[-1]!r}")
    tokens.append(Token("eof", None, line))
    return tokens


def _string(text: str, i: int, line: int) -> tuple[Token, int]:
    """A single-quoted string starting at text[i]; `${...}` parts are parsed as expressions."""
    parts: list[Any] = []
    literal: list[str] = []
    i += 1
    escapes = {"'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "$": "$"}
    while True:
        if i >= len(text) or text[i] == "\n":
            raise BicepSyntaxError(f"line {line}: unterminated string")
        c = text[i]
        if c == "\\":
            literal.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
        elif c == "'":
            i += 1
            break
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(text):
                    raise BicepSyntaxError(f"line {line}: unterminated interpolation")
                if text[j] == "'":  # a string inside the interpolation
                    _, j = _string(text, j, line)
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Parser(tokenize(text[i + 2 : j - 1])).expression_only())
            i = j
        else:
            literal.append(c)
            i += 1
    if literal or not parts:
        parts.append("".join(literal))
    if len(parts) == 1 and isinstance(parts[0], str):
        return Token("string", parts[0], line), i
    return Token("istring", Interp(tuple(parts)), line), i


# --- parser ---
_BINARY = [
    ["??"],
    ["||"],
    ["&&"],
    ["==", "!=", "=~", "!~"],
    ["<", "<=", ">", ">="],
    ["+", "-"],
    ["*", "/", "%"],
]


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    # helpers
    @property
    def token(self) -> Token:
        return self.tokens[self.pos]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def at(self, kind: str, value: Any = None) -> bool:
        return self.token.kind == kind and (value is None or self.token.value == value)

    def at_op(self, *values: str) -> bool:
        return self.token.kind == "op" and self.token.value in values

    def take(self, kind: str, value: Any = None) -> Token:
        if not self.at(kind, value):
            raise BicepSyntaxError(
                f"line {self.token.line}: expected {value or kind}, found {self.token.value!r}"
            )
        token = self.token
        self.pos += 1
        return token

    def skip_newlines(self) -> None:
        while self.at("newline"):
            self.pos += 1

    # file
    def file(self, path: Path) -> BicepFile:
        result = BicepFile(path)
        decorators: dict[str, tuple[Any, ...]] = {}
        while True:
            self.skip_newlines()
            if self.at("eof"):
                return result
            if self.at_op("@"):
                self.pos += 1
                decorator = self.postfix(self.primary())
                name = decorator.name if isinstance(decorator, Call) else str(decorator)
                decorators[name] = decorator.args if isinstance(decorator, Call) else ()
                continue
            keyword = self.take("name").value
            if keyword == "targetScope":
                self.take("op", "=")
                result.target_scope = self.expression()
            elif keyword == "using":
                result.using = self.take("string").value
            elif keyword in ("param", "var", "output"):
                result.declarations.append(self.simple(keyword, decorators))
            elif keyword in ("resource", "module"):
                result.declarations.append(self.deployable(keyword, decorators))
            else:
                raise BicepSyntaxError(f"line {self.token.line}: unsupported statement {keyword!r}")
            decorators = {}
            if not self.at("eof"):
                self.take("newline")

    def simple(self, kind: str, decorators: dict[str, tuple[Any, ...]]) -> Declaration:
        name = self.take("name").value
        declaration = Declaration(kind, name, decorators)
        if kind != "var" and not self.at_op("="):
            type_parts = []
            while not self.at_op("=") and not self.at("newline") and not self.at("eof"):
                type_parts.append(str(self.token.value))
                self.pos += 1
            declaration.type = " ".join(type_parts) or None
        if self.at_op("="):
            self.pos += 1
            declaration.value = self.expression()
        return declaration

    def deployable(self, kind: str, decorators: dict[str, tuple[Any, ...]]) -> Declaration:
        name = self.take("name").value
        declaration = Declaration(kind, name, decorators, type=self.take("string").value)
        if self.at("name", "existing"):
            self.pos += 1
            declaration.existing = True
        self.take("op", "=")
        if self.at("name", "if"):
            self.pos += 1
            self.take("op", "(")
            declaration.condition = self.expression()
            self.take("op", ")")
        declaration.value = self.expression()
        return declaration

    # expressions
    def expression_only(self) -> Any:
        value = self.expression()
        self.skip_newlines()
        self.take("eof")
        return value

    def expression(self) -> Any:
        condition = self.binary(0)
        if self.at_op("?"):
            self.pos += 1
            then = self.expression()
            self.take("op", ":")
            return Ternary(condition, then, self.expression())
        return condition

    def binary(self, level: int) -> Any:
        if level == len(_BINARY):
            return self.unary()
        left = self.binary(level + 1)
        while self.at_op(*_BINARY[level]):
            op = self.token.value
            self.pos += 1
            left = BinOp(op, left, self.binary(level + 1))
        return left

    def unary(self) -> Any:
        if self.at_op("!", "-"):
            op = self.token.value
            self.pos += 1
            operand = self.unary()
            return -operand if op == "-" and isinstance(operand, int) else Unary(op, operand)
        return self.postfix(self.primary())

    def postfix(self, node: Any) -> Any:
        while True:
            if self.at_op(".", ".?"):
                safe = self.token.value == ".?"
                self.pos += 1
                name = self.take("name").value
                if self.at_op("(") and not safe:  # a method: x.listKeys(), sys.description()
                    node = Call(f"{_dotted(node)}.{name}", self.arguments())
                else:
                    node = Prop(node, name, safe)
            elif self.at_op("["):
                self.pos += 1
                node = Index(node, self.expression())
                self.take("op", "]")
            elif self.at_op("!") and self.peek().kind != "name":
                self.pos += 1
                node = NonNull(node)
            else:
                return node

    def arguments(self) -> tuple[Any, ...]:
        self.take("op", "(")
        args = []
        while not self.at_op(")"):
            args.append(self.expression())
            if not self.at_op(")"):
                self.take("op", ",")
        self.pos += 1
        return tuple(args)

    def primary(self) -> Any:
        token = self.token
        if token.kind in ("string", "mstring", "istring", "number"):
            self.pos += 1
            return token.value
        if token.kind == "name":
            if self.peek().kind == "op" and self.peek().value == "=>":  # x => body
                self.pos += 2
                return Lambda((token.value,), self.expression())
            self.pos += 1
            if token.value in ("true", "false"):
                return token.value == "true"
            if token.value == "null":
                return None
            if self.at_op("("):
                return Call(token.value, self.arguments())
            return Ref(token.value)
        if self.at_op("("):
            return self.parenthesised()
        if self.at_op("{"):
            return self.object()
        if self.at_op("["):
            return self.array()
        raise BicepSyntaxError(f"line {token.line}: unexpected {token.value!r}")

    def parenthesised(self) -> Any:
        start = self.pos
        self.pos += 1
        names = []
        while self.at("name") and self.peek().kind == "op" and self.peek().value in (",", ")"):
            names.append(self.take("name").value)
            if self.at_op(","):
                self.pos += 1
        if self.at_op(")") and self.peek().kind == "op" and self.peek().value == "=>":  # (a, b) => body
            self.pos += 2
            return Lambda(tuple(names), self.expression())
        self.pos = start + 1
        value = self.expression()
        self.take("op", ")")
        return value

    def object(self) -> dict[str, Any]:
        self.take("op", "{")
        result: dict[str, Any] = {}
        self.skip_newlines()
        while not self.at_op("}"):
            key_token = self.token
            if key_token.kind in ("name", "string"):
                key: Any = key_token.value
            elif key_token.kind == "istring":
                key = key_token.value
            else:
                raise BicepSyntaxError(f"line {key_token.line}: bad object key {key_token.value!r}")
            self.pos += 1
            if self.at_op(":"):
                self.pos += 1
                value = self.expression()
            elif key_token.kind == "name" and self.at("string"):  # a nested `resource` in a resource body
                raise BicepSyntaxError(f"line {key_token.line}: nested declarations are not supported")
            else:
                raise BicepSyntaxError(f"line {key_token.line}: expected ':' after {key!r}")
            if isinstance(key, str) and key in result:
                raise BicepSyntaxError(f"line {key_token.line}: duplicate property {key!r}")
            result[key if isinstance(key, str) else str(key)] = value
            if self.at_op(","):
                self.pos += 1
            self.skip_newlines()
        self.pos += 1
        return result

    def array(self) -> Any:
        self.take("op", "[")
        self.skip_newlines()
        if self.at("name", "for"):
            return self.for_loop()
        items = []
        while not self.at_op("]"):
            items.append(self.expression())
            if self.at_op(","):
                self.pos += 1
            self.skip_newlines()
        self.pos += 1
        return items

    def for_loop(self) -> For:
        self.take("name", "for")
        if self.at_op("("):
            self.pos += 1
            variables = [self.take("name").value]
            while self.at_op(","):
                self.pos += 1
                variables.append(self.take("name").value)
            self.take("op", ")")
        else:
            variables = [self.take("name").value]
        self.take("name", "in")
        iterable = self.expression()
        self.take("op", ":")
        condition = None
        if self.at("name", "if"):
            self.pos += 1
            self.take("op", "(")
            condition = self.expression()
            self.take("op", ")")
        body = self.expression()
        self.skip_newlines()
        self.take("op", "]")
        return For(tuple(variables), iterable, body, condition)


def _dotted(node: Any) -> str:
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Prop):
        return f"{_dotted(node.target)}.{node.name}"
    return "<expr>"


def read(path: Path) -> BicepFile:
    """Parse a .bicep or .bicepparam file."""
    return Parser(tokenize(path.read_text(encoding="utf-8"))).file(path)


def walk(node: Any) -> Any:
    """Every node under `node`, depth first (dict values, list items and node fields)."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from walk(item)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            yield from walk(getattr(node, name))
