"""Limits on what a message template may cost: sizes of built values, loop
iterations, output, CPU time. ``policy.templating`` renders through the
environments defined here (``PLAIN``, ``HTML``) and ``generate``."""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from functools import wraps
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer
from markupsafe import escape

from policy.types import CONTROL_CHARS

# StrictUndefined: a variable the data lacks is an error, not an empty string in a
# message a user reads. The sandbox keeps templates from reaching Python internals.

# ---- Limits ---------------------------------------------------------------------
# Templates come from API clients and their data from producers: both are hostile
# input. The HTTP process renders previews and the UserShards render sends, so a
# template that runs for seconds or builds a gigabyte string would stall or kill a
# process that serves everybody. Every render through ``Compiled.render`` is
# bounded by these; going over one raises ``TemplateLimit`` (a ``template.error``
# row, a 422 from the preview), always before the oversized value is built.

# A string built by ``*``, ``+``, ``%``, ``~``, a filter or a str method. The same
# as one rendered part: a longer string could not be output anyway.
MAX_STRING_CHARS = 256 * 1024
# A list or tuple built by ``*`` or ``+`` (``[1] * 10**9``): its items ...
MAX_ITEMS = 10_000
# ... and its size: one per item plus the characters of its strings, so that
# ``[s] * 10000`` (small in memory, huge once printed or joined) is refused too.
MAX_SEQUENCE_SIZE = 256 * 1024
# An integer built by ``*`` or ``**`` (``9 ** (9 ** 9)`` has 370M digits).
MAX_INT_BITS = 16 * 1024
# ``range()`` (the sandbox's own cap is 100k).
MAX_RANGE = 10_000
# Iterations of all ``{% for %}`` loops of one render together (nested loops over
# big ranges, over big data).
MAX_ITERATIONS = 100_000
# One rendered part (subject, text or html).
MAX_OUTPUT_CHARS = 256 * 1024
# Everything the parts of one render emit, including what ``{% set %}`` blocks,
# macros and ``{% call %}`` capture before (or instead of) reaching the output.
MAX_EMITTED_CHARS = 1024 * 1024
# Width-like arguments that multiply a string: ``tojson(indent=)``, and the
# repetitions of the lorem ipsum generator.
MAX_INDENT = 16
MAX_LIPSUM_PARAGRAPHS = 10
# What one built-in filter may walk, compare or stringify in one uninterruptible
# call (sort, unique, string, ...), and what it may collect from a lazy sequence
# (``xs|map("center", 9999)|list``): its size as ``_size`` counts it. About the
# largest data a request can carry (its body is bounded), so real data fits.
MAX_FILTER_INPUT = 1024 * 1024
# Lines ``wordwrap`` may break a text into (each costs a few microseconds).
MAX_WRAPPED_LINES = 32 * 1024
# Digits of ``round``'s precision (``ceil``/``floor`` compute 10 ** precision).
MAX_ROUND_PRECISION = 400
# Time of one render, all parts together, checked between output chunks and at
# loop iterations, operators, calls and filters (every ``_CHECK_EVERY``-th: each
# step between two checks is bounded by the size limits). CPU time of the rendering
# thread (``time.thread_time``), not wall time: on a loaded machine a preempted
# process would otherwise fail good templates, permanently (a ``template.error`` is
# not retried). Pure code reading a clock: the rule that policy/ takes ``now`` from
# its caller is about decisions (what to send when); this is a CPU budget that
# changes no decision a sane template makes, and the result never sees it.
MAX_RENDER_SECONDS = 0.25
_CHECK_EVERY = 32  # a power of two


class TemplateLimit(Exception):
    """A render went over one of the limits above; the message says which."""


class TemplateOutput(Exception):
    """A render produced what a Content may not hold (a multi-line subject, NUL)."""


CONTROL = re.compile(f"[{CONTROL_CHARS}]")


class Budget:
    """What one render has used so far (all of its parts)."""

    __slots__ = ("deadline", "iterations", "emitted", "ticks")

    def __init__(self, deadline: float):
        self.deadline = deadline  # in time.thread_time()
        self.iterations = 0
        self.emitted = 0
        self.ticks = 0

    def check_time(self) -> None:
        """Over the time limit? Reads the clock on the first call and every
        ``_CHECK_EVERY``-th after it (reading it costs about a microsecond)."""
        self.ticks += 1
        if self.ticks & (_CHECK_EVERY - 1) != 1:
            return
        if time.thread_time() > self.deadline:
            raise TemplateLimit(f"rendering took longer than {MAX_RENDER_SECONDS} s of CPU")

    def count(self, iterable: Iterable[Any], literal: int) -> Iterator[Any]:
        """``iterable``, each item counted; ``literal``: the characters of literal
        text in the loop's body, emitted on every iteration."""
        for item in iterable:
            self.iterations += 1
            if self.iterations > MAX_ITERATIONS:
                raise TemplateLimit(f"more than {MAX_ITERATIONS} loop iterations")
            if literal:
                self.emit(literal)
            self.check_time()
            yield item

    def emit(self, n: int) -> None:
        self.emitted += n
        if self.emitted > MAX_EMITTED_CHARS:
            raise TemplateLimit(f"more than {MAX_EMITTED_CHARS} characters of output")


# The budget of the render under way (per thread and per asyncio task). None when a
# template is evaluated outside ``Compiled.render`` (constant folding at compile
# time): then the size limits still hold, the counters and the clock do not.
BUDGET: ContextVar[Budget | None] = ContextVar("tidings_template_budget", default=None)


def _tick() -> None:
    b = BUDGET.get()
    if b is not None:
        b.check_time()


def _size(obj: Any, limit: int = MAX_SEQUENCE_SIZE, indent: int = 0, depth: int = 0) -> int:
    """About how many characters ``obj`` prints as (at least): a string's length, a
    number's digits, one per item of a container plus its items' sizes, plus
    ``indent`` per level of nesting for each item (an indented dump puts every item
    on its own line). Stops counting once past ``limit``: the walk is bounded by it,
    however many times a value built by the template refers to the same list."""
    if isinstance(obj, str | bytes | bytearray):
        return len(obj)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj.bit_length() * 1233 // 4096 + 1  # log10(2) ~ 1233/4096
    items: Iterable[Any]
    if isinstance(obj, dict):
        items = (x for kv in obj.items() for x in kv)
    elif isinstance(obj, list | tuple | set | frozenset):
        items = obj
    else:
        return 1
    total = 0
    for x in items:
        total += 1 + indent * (depth + 1) + _size(x, limit - total, indent, depth + 1)
        if total > limit:
            break
    return total


def _depth(obj: Any) -> int:
    """How deeply ``obj``'s containers nest. Walks all of it: call it only on a value
    whose ``_size`` is known to be bounded."""
    if isinstance(obj, dict):
        items: Iterable[Any] = obj.values()
    elif isinstance(obj, list | tuple | set | frozenset):
        items = obj
    else:
        return 0
    return 1 + max((_depth(x) for x in items), default=0)


def _collect(value: Any) -> Any:
    """``value``; a lazy sequence (``map``, ``select``, a generator) materialized into
    a list, refused as soon as its items add up to more than ``MAX_FILTER_INPUT``
    (each item may be small, their number is what multiplies)."""
    if not isinstance(value, Iterator):
        return value
    items: list[Any] = []
    total = 0
    for x in value:
        total += 1 + _size(x, MAX_FILTER_INPUT - total)
        if total > MAX_FILTER_INPUT:
            raise TemplateLimit(f"a sequence of more than {MAX_FILTER_INPUT} characters")
        items.append(x)
    return items


def _check_input(name: str, value: Any, limit: int = MAX_FILTER_INPUT) -> None:
    """Refuse a (non-string) value over ``limit`` as ``_size`` counts it, before a
    filter walks, compares or stringifies all of it in one call."""
    if not isinstance(value, str) and _size(value, limit) > limit:
        raise TemplateLimit(f"{name} of a value of more than {limit} characters")


def _too_long() -> TemplateLimit:
    return TemplateLimit(f"a string of more than {MAX_STRING_CHARS} characters")


def _check_result(value: Any) -> Any:
    """``value`` when within the limits (a safety net after the estimates)."""
    if isinstance(value, str | bytes):
        if len(value) > MAX_STRING_CHARS:
            raise _too_long()
    elif isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise TemplateLimit(f"a list of more than {MAX_ITEMS} items")
        if _size(value) > MAX_SEQUENCE_SIZE:
            raise TemplateLimit(f"a list of more than {MAX_SEQUENCE_SIZE} characters")
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"a number of more than {MAX_INT_BITS} bits")
    return value


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse ``left <op> right`` when its result would be over a limit, before
    computing it. Bytes are refused outright: a template has no use for them (they
    cannot be made in one; this is the safety net)."""
    if isinstance(left, _BYTES) or isinstance(right, _BYTES):
        raise TemplateLimit("bytes in a template")
    if op == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"a number of more than {MAX_INT_BITS} bits")
            return
        # a float count is a TypeError in Python; refused the same way when huge
        seq, n = (left, right) if isinstance(right, int | float) else (right, left)
        if not isinstance(n, int | float) or n <= 0:
            return
        if isinstance(seq, str | bytes):
            if len(seq) * n > MAX_STRING_CHARS:
                raise _too_long()
        elif isinstance(seq, list | tuple):
            if len(seq) * n > MAX_ITEMS:
                raise TemplateLimit(f"a list of more than {MAX_ITEMS} items")
            if _size(seq) * n > MAX_SEQUENCE_SIZE:
                raise TemplateLimit(f"a list of more than {MAX_SEQUENCE_SIZE} characters")
    elif op == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            if len(left) + len(right) > MAX_STRING_CHARS:
                raise _too_long()
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            if len(left) + len(right) > MAX_ITEMS:
                raise TemplateLimit(f"a list of more than {MAX_ITEMS} items")
            if _size(left) + _size(right) > MAX_SEQUENCE_SIZE:
                raise TemplateLimit(f"a list of more than {MAX_SEQUENCE_SIZE} characters")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
                raise TemplateLimit(f"a number of more than {MAX_INT_BITS} bits")
    elif op == "%" and isinstance(left, str):
        _check_percent(left, right)


# One printf-style conversion: optional mapping key, flags, width, precision.
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(fmt: str, args: Any) -> None:
    """``fmt % args``: refuse ``*`` widths and an estimated result over the limit
    (widths, and every conversion printing the largest argument)."""
    conversions = widths = 0
    for m in _PERCENT.finditer(fmt):
        conversions += 1
        for g in m.groups():
            if g == "*":
                raise TemplateLimit("a '*' width in a format")
            if g:
                widths += int(g) if len(g) <= 7 else MAX_STRING_CHARS + 1
    if len(fmt) + widths + conversions * _size(args) > MAX_STRING_CHARS:
        raise _too_long()


def _check_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """``fmt.format(*args, **kwargs)`` likewise; no fields nested in a format spec."""
    fields = widths = 0
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # the call itself will say what is wrong
    for _, field, spec, _ in parsed:
        if field is None:
            continue
        fields += 1
        if spec and "{" in spec:
            raise TemplateLimit("a field nested in a format spec")
        for digits in re.findall(r"\d+", spec or ""):
            widths += int(digits) if len(digits) <= 7 else MAX_STRING_CHARS + 1
    if len(fmt) + widths + fields * _size((args, dict(kwargs))) > MAX_STRING_CHARS:
        raise _too_long()


def _check_replace(s: str, old: Any, new: Any, count: Any = -1) -> None:
    if not isinstance(old, str) or not isinstance(new, str):
        return
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * len(new) > MAX_STRING_CHARS:
        raise _too_long()


_BYTES = (bytes, bytearray, memoryview)

# The str methods a template may call: all bounded by their string's size, or
# estimated below (center, expandtabs, format, join, replace, ...). Not: ``encode``
# (bytes, whose methods are unchecked), ``translate`` (a table can map every
# character to a long string), ``maketrans``. Markup adds ``striptags``/``unescape``.
_STR_METHODS = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find", "format", "format_map",
    "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower", "isnumeric",
    "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "partition",
    "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip",
    "split", "splitlines", "startswith", "strip", "striptags", "swapcase", "title", "unescape", "upper", "zfill",
})


def _check_join(sep: str, items: list[Any]) -> None:
    if len(sep) * len(items) + _size(items) > MAX_STRING_CHARS:
        raise _too_long()


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Refuse a method call a template may not make (on bytes, on a type, a str
    method not in ``_STR_METHODS``, ``int.to_bytes``) or whose result would be over
    the limit; the (maybe materialized) arguments to call it with."""
    owner = getattr(obj, "__self__", None)  # a bound method's object
    target = obj
    if owner is None:
        target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(owner, _BYTES):
        raise TemplateLimit(f"bytes.{name}() in a template")
    if isinstance(owner, type):  # bytes.fromhex, dict.fromkeys, int.from_bytes, ...
        raise TemplateLimit(f"{owner.__name__}.{name}() in a template")
    if owner is None and name == "maketrans":  # a static method: no __self__
        raise TemplateLimit(f"{getattr(target, '__qualname__', name)}() in a template")
    if isinstance(owner, int) and name == "to_bytes":
        raise TemplateLimit("int.to_bytes() in a template")
    if not isinstance(owner, str):
        return args
    if name not in _STR_METHODS:
        raise TemplateLimit(f"str.{name}() in a template")
    if name in ("center", "ljust", "rjust", "zfill"):
        width = _arg(args, kwargs, 0, "width", 0)
        if isinstance(width, int) and width > MAX_STRING_CHARS:
            raise _too_long()
    elif name == "expandtabs":
        size = _arg(args, kwargs, 0, "tabsize", 8)
        if isinstance(size, int) and len(owner) + owner.count("\t") * size > MAX_STRING_CHARS:
            raise _too_long()
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, *args[:3])
    elif name == "join" and len(args) == 1:
        items = list(_collect(args[0]))
        _check_join(owner, items)
        return (items,)
    elif name == "format":
        _check_format(owner, args, kwargs)
    elif name == "format_map":
        # any argument: a list serves ``{0}`` fields too
        _check_format(owner, args, kwargs)
    return args


# Filters that build all of a lazy input (``_collect`` bounds what they build) ...
_COLLECTING = frozenset({"join", "list", "sort", "unique", "reverse", "slice", "groupby"})
# ... that compare its items with each other (bounded by its size) ...
_COMPARING = frozenset({"sort", "unique", "dictsort", "groupby", "min", "max"})
# ... and that make a string of a value that is not one yet.
_STRINGIFYING = frozenset({
    "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "replace", "safe",
    "string", "striptags", "title", "trim", "truncate", "upper", "urlencode", "urlize", "wordcount",
    "wordwrap", "xmlattr",
})


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    """Refuse a built-in filter call whose result would be over the limit, or that
    would run long in one call; the (maybe materialized) value and arguments to
    call it with. Input sizes are bounded (the data by the request's body, values
    the template builds by the limits above); whatever multiplies a size is
    estimated here, before the filter runs."""
    if name in _COLLECTING:
        value = _collect(value)
    if name in _COMPARING or name in _STRINGIFYING:
        _check_input(name, value)
    if name == "center":
        width = _arg(args, kwargs, 0, "width", 80)
        if isinstance(width, int) and width > MAX_STRING_CHARS:
            raise _too_long()
    elif name == "indent":
        width = _arg(args, kwargs, 0, "width", 4)
        w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        s = str(value)
        if len(s) + w * (s.count("\n") + 1) > MAX_STRING_CHARS:
            raise _too_long()
    elif name == "wordwrap":
        s = str(value)
        width = _arg(args, kwargs, 0, "width", 79)
        wrap = _arg(args, kwargs, 2, "wrapstring", None) or "\n"
        if isinstance(width, int) and width > 0 and isinstance(wrap, str):
            lines = len(s) // width + s.count("\n") + 1
            if lines > MAX_WRAPPED_LINES:
                raise TemplateLimit(f"wordwrap into more than {MAX_WRAPPED_LINES} lines")
            if len(s) + lines * len(wrap) > MAX_STRING_CHARS:
                raise _too_long()
    elif name == "urlize":
        _check_urlize(str(value), args, kwargs)
    elif name == "sum":
        start = _arg(args, kwargs, 1, "start", 0)
        if not isinstance(start, int | float):  # sum(start=[]) adds lists: quadratic
            raise TemplateLimit("sum() with a start that is not a number")
    elif name == "round":
        precision = _arg(args, kwargs, 0, "precision", 0)
        if isinstance(precision, int) and abs(precision) > MAX_ROUND_PRECISION:
            raise TemplateLimit(f"round() to more than {MAX_ROUND_PRECISION} digits")
    elif name == "pprint":
        # pformat reprs every level again for each level it nests in
        size = _size(value, MAX_OUTPUT_CHARS)
        if size > MAX_OUTPUT_CHARS or size * (1 + _depth(value)) > MAX_OUTPUT_CHARS:
            raise TemplateLimit(f"pprint of more than {MAX_OUTPUT_CHARS} characters")
    elif name == "join":
        items = list(value)
        sep = _arg(args, kwargs, 0, "d", "")
        if isinstance(sep, str):
            _check_join(sep, items)
        return items, args
    elif name == "replace" and len(args) >= 2:
        _check_replace(str(value), *args[:3])
    elif name == "format":
        _check_percent(str(value), kwargs or args)
    elif name in ("slice", "batch"):
        n = _arg(args, kwargs, 0, "slices" if name == "slice" else "linecount", 0)
        if isinstance(n, int) and n > MAX_ITEMS:
            raise TemplateLimit(f"{name} into more than {MAX_ITEMS} parts")
    elif name == "tojson":
        indent = _arg(args, kwargs, 0, "indent", None)
        width = 0
        if isinstance(indent, int | str) and not isinstance(indent, bool):
            width = max(0, indent if isinstance(indent, int) else len(indent))
            if width > MAX_INDENT:
                raise TemplateLimit(f"an indent over {MAX_INDENT}")
        # an indented dump puts every item on its own line, indented by its depth
        if _size(value, MAX_OUTPUT_CHARS, width) > MAX_OUTPUT_CHARS:
            raise TemplateLimit(f"tojson of more than {MAX_OUTPUT_CHARS} characters")
    return value, args


def _check_urlize(s: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """``urlize`` adds its ``rel`` and ``target`` (escaped) to every link it makes;
    a link is a word with a ``.``, ``@`` or ``:`` in it."""
    target = _arg(args, kwargs, 2, "target", None)
    rel = _arg(args, kwargs, 3, "rel", None)
    extra = sum(len(x) for x in (rel, target) if isinstance(x, str)) * 6  # escaped: up to 6 each
    if not extra:
        return
    links = sum(1 for w in s.split() if "." in w or "@" in w or ":" in w)
    if len(s) + links * extra > MAX_STRING_CHARS:
        raise _too_long()


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """Built-in filter ``f`` with the limits checked before and after it runs."""
    passes = getattr(f, "jinja_pass_arg", None) is not None  # context/eval_ctx/env first

    @wraps(f)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        lead, rest = (args[:1], args[1:]) if passes else ((), args)
        if rest:
            value, more = _check_filter(name, rest[0], rest[1:], kwargs)
            args = (*lead, value, *more)
        return _check_result(f(*args, **kwargs))
    return guarded


def _range(*args: int) -> range:
    """The template's ``range()``: at most ``MAX_RANGE`` items."""
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = MAX_RANGE + 1
    if n > MAX_RANGE:
        raise TemplateLimit(f"range() of more than {MAX_RANGE} items")
    return r


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > MAX_LIPSUM_PARAGRAPHS or max > 1000 or min > 1000:
        raise TemplateLimit(f"lipsum() of more than {MAX_LIPSUM_PARAGRAPHS} paragraphs of 1000 words")
    return str(generate_lorem_ipsum(n=n, html=html, min=min, max=max))


# Hooks the code generator puts around every loop, ``~`` and output (pass_context:
# never evaluated at compile time, where no budget counts).

@jinja2.pass_context
def _iterate(context: Context, iterable: Any, literal: int = 0) -> Any:
    b = BUDGET.get()
    return iterable if b is None else b.count(iterable, literal)


@jinja2.pass_context
def _concat(context: Context, items: list[Any]) -> Any:
    _tick()
    if sum(len(x) if isinstance(x, str) else _size(x) for x in items) > MAX_STRING_CHARS:
        raise _too_long()
    return _check_result(markup_join(items) if context.eval_ctx.autoescape else str_join(items))


@jinja2.pass_context
def _emit(context: Context, value: Any) -> Any:
    if not isinstance(value, str) and _size(value, MAX_OUTPUT_CHARS) > MAX_OUTPUT_CHARS:
        # a list that refers many times to one long string prints as gigabytes
        raise TemplateLimit(f"more than {MAX_OUTPUT_CHARS} characters of output")
    s = escape(value) if context.eval_ctx.autoescape else str(value)
    b = BUDGET.get()
    if b is not None:
        b.emit(len(s))
    return s


def _hook(name: str, node: nodes.Node, *args: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(node, name, list(args), [], None, None, lineno=node.lineno)


class _Hooks(NodeTransformer):
    """Rewrites a parsed template: ``for x in it`` → ``for x in it|_tidings_iter(n)``
    (``n``: the literal text in its body, counted as emitted on each iteration),
    ``a ~ b`` → ``[a, b]|_tidings_concat``, ``{{ x }}`` → ``{{ x|_tidings_emit }}``
    (literal text outside loops is bounded by the template's own size)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        literal = sum(len(t.data) for n in node.body for t in n.find_all(nodes.TemplateData))
        self.generic_visit(node)  # in place
        node.iter = _hook("_tidings_iter", node.iter, nodes.Const(literal))
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _hook("_tidings_concat", nodes.List(node.nodes, lineno=node.lineno))

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [n if isinstance(n, nodes.TemplateData) else _hook("_tidings_emit", n) for n in node.nodes]
        return node


class _LimitedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Hooks().visit(node)
        super().visit_Template(node, frame)


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the limits above."""

    intercepted_binops = frozenset({"*", "+", "%", "**"})
    code_generator_class = _LimitedCodeGenerator

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.globals["range"] = _range
        self.globals["lipsum"] = _lipsum
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(_tidings_iter=_iterate, _tidings_concat=_concat, _tidings_emit=_emit)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return _check_result(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        args = _check_call(__obj, args, kwargs)
        return _check_result(super().call(__context, __obj, *args, **kwargs))


def generate(template: jinja2.Template, data: Mapping[str, Any], budget: Budget) -> str:
    """``template.render(data)``, a chunk at a time, within the output and time limits."""
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(data):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise TemplateLimit(f"more than {MAX_OUTPUT_CHARS} characters of output")
        chunks.append(chunk)
        budget.check_time()
    return "".join(chunks)


PLAIN = _LimitedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
HTML = _LimitedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)


