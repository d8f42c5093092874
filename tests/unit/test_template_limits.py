"""Template limits: hostile templates are refused with TemplateLimit (a one-line
``template.error`` reason), never run for seconds or build gigabytes; ordinary
templates render exactly as before."""

import asyncio

import pytest

from policy import templating
from policy.templating import Compiled, MessageTemplate, TemplateLimit, render_error


def render(text: str, data: dict | None = None, html: bool = False) -> str | None:
    t = MessageTemplate(id="t", channel="email", **{"html" if html else "text": text})
    content = Compiled(t).render(data or {})
    return content.html if html else content.text


ABUSE = {
    "string times a huge float": '{{ "a" * 2e8 }}',
    "string times a huge int": '{{ "a" * 200000000 }}',
    "list times a billion": "{{ [1] * 10**9 }}",
    "huge range": "{% for i in range(10**9) %}{% endfor %}",
    "huge range as a list": "{{ range(10**9)|list }}",
    "nested loops over big ranges": "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "nested loops in a macro": ("{% macro m() %}{% for i in range(10000) %}{% endfor %}{% endmacro %}"
                                "{% for i in range(10000) %}{{ m() }}{% endfor %}"),
    "doubling with ~": ('{% set a = "x" * 60000 %}{% set b = a ~ a %}{% set c = b ~ b %}'
                        "{% set d = c ~ c %}{{ d|length }}"),
    "doubling with +": '{% set a = "x" * 60000 %}{% set b = a + a %}{% set c = b + b %}{% set d = c + c %}{{ d|length }}',
    "a tower of powers": "{{ 9**(9**9) }}",
    "squaring big numbers": "{% set a = 2**16000 %}{{ (a * a) > 0 }}",
    "center filter": '{{ "a"|center(1000000000) }}',
    "center method": '{{ "a".center(1000000000) }}',
    "format width": '{{ "{:>1000000000}".format(1) }}',
    "nested format width": '{{ "{:>{}}".format(1, 1000000000) }}',
    "percent width": '{{ "%1000000000d" % 1 }}',
    "percent star width": '{{ "%*d" % (1000000000, 1) }}',
    "format filter width": '{{ "%1000000000d"|format(1) }}',
    "join with a big separator": '{{ range(10000)|join("x" * 60000) }}',
    "join of a repeated big string": '{% set s = "a" * 60000 %}{{ ([s] * 4)|join ~ ([s] * 4)|join }}',
    "list of big strings": '{% set s = "a" * 60000 %}{{ [s] * 10000 }}',
    "replace amplification": '{% set s = "a" * 60000 %}{{ s|replace("a", "b" * 60000) }}',
    "replace method": '{% set s = "a" * 60000 %}{{ s.replace("a", "b" * 10) }}',
    "indent amplification": '{% set s = "a\\n" * 30000 %}{{ s|indent(1000) }}',
    "tojson indent": "{{ range(100)|list|tojson(indent=100000) }}",
    "lipsum": "{{ lipsum(1000000) }}",
    "slice into a billion": "{{ [1]|slice(1000000000)|list }}",
    "output through a loop": "{% for i in range(10000) %}" + "x" * 1000 + "{% endfor %}",
    "output captured by set": ('{% set s = "a" * 60000 %}{% set x %}{% for i in range(10000) %}{{ s }}'
                               "{% endfor %}{% endset %}{{ x|length }}"),
    "recursive loop": ("{% for i in range(10000) recursive %}{% if loop.depth < 4 %}{{ loop(range(10000)) }}"
                       "{% endif %}{% endfor %}"),
    # bytes: made by str.encode, their methods and % were unchecked
    "bytes ljust": "{{ 'a'.encode().ljust(150000000) }}",
    "bytes percent": "{{ '%200000000s'.encode() % ('a'.encode(),) }}",
    "int to bytes": "{{ (1).to_bytes(200000000, 'big') }}",
    "bytes from a type's method": "{{ ''.maketrans('a', 'b') }}",
    "str translate": "{{ ('a' * 256000).translate({97: 'b' * 262144}) }}",
    "format_map with a list": '{{ "{0:>1000000000}".format_map([1]) }}',
    "center method on markup": "{{ ('a'|safe).center(1000000000) }}",
    # one filter call that runs long or builds much
    "sum of lists": "{{ ([[1] * 20] * 500)|sum(start=[]) }}",
    "round to a billion digits": "{{ 1.5|round(1000000000, 'ceil') }}",
    "wordwrap into many lines": '{{ ("a" * 200000)|wordwrap(1) }}',
    "urlize with a long target": '{{ ("a.b " * 20000)|urlize(target="x" * 1000) }}',
    "map then list": '{{ range(10000)|map("center", 200000)|list|length }}',
    "map then join": '{{ range(10000)|map("center", 200000)|join|length }}',
    "a list referring to one long string": ('{% set s = "a" * 200000 %}{% set a = [s, s, s, s] %}'
                                            "{% set b = [a, a, a, a] %}{% set c = [b, b, b, b] %}{{ c }}"),
    "stringifying a tower of lists": ('{% set s = "a" * 200000 %}{% set a = [s, s, s, s] %}'
                                      "{% set b = [a, a, a, a] %}{% set c = [b, b, b, b] %}{{ c|string|length }}"),
    "sorting a tower of lists": ('{% set a = range(10000)|list %}{% set b = [a, a, a, a] %}'
                                 "{% set c = [b, b, b, b] %}{% set d = [c, c, c, c] %}{{ d|sort|length }}"),
    "xmlattr of a tower of lists": ('{% set s = "a" * 200000 %}{% set a = [s, s, s, s] %}'
                                    "{% set b = [a, a, a, a] %}{{ {'x': b}|xmlattr }}"),
}


@pytest.mark.parametrize("source", ABUSE.values(), ids=ABUSE.keys())
def test_abuse_is_refused(source):
    with pytest.raises(TemplateLimit) as e:
        render(source)
    reason = render_error(e.value)
    assert reason.startswith("template limit: ") and "\n" not in reason


@pytest.mark.parametrize("source", ["{{ s * 10 }}", "{{ s ~ s }}", "{% for x in xs %}{{ s }}{% endfor %}"])
def test_data_amplification_is_refused(source):
    with pytest.raises(TemplateLimit):
        render(source, {"s": "x" * 150_000, "xs": list(range(5000))})


def nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@pytest.mark.parametrize("source, data", [
    # confirmed at 4.2 s, 1.3 s and 113 MB of one uninterruptible call
    ("{{ x|sum(start=[]) }}", {"x": [list(range(20))] * 10_000}),
    ("{{ x|pprint }}", {"x": nested(100, list(range(20_000)))}),
    ("{{ x|tojson(indent=16) }}", {"x": nested(50, [str(i) for i in range(2000)])}),
    ("{{ x|tojson }}", {"x": ["y" * 100] * 3000}),
    ("{{ x|sort|length }}", {"x": [["y" * 100] * 1000] * 20}),
], ids=["sum of lists", "pprint deeply nested", "tojson indented", "tojson too long", "sort of a lot"])
def test_costly_filter_calls_on_data_are_refused(source, data):
    with pytest.raises(TemplateLimit):
        render(source, data)


def test_filters_still_work_on_ordinary_data():
    data = {"xs": [3, 1, 2], "d": {"b": 1, "a": 2}, "n": nested(3, [1, 2]), "s": "see www.example.com"}
    text = ("{{ xs|sum }} {{ xs|sum(start=1.5) }} {{ xs|sort|list }} {{ xs|unique|list }} {{ d|dictsort }} "
            "{{ n|pprint }} {{ n|tojson(indent=2)|length }} {{ xs|map('string')|join('-') }} "
            "{{ 1.25|round(1, 'ceil') }} {{ s|urlize(target='_blank')|length > 0 }} {{ 'a b'.title() }} "
            "{{ ' x '.strip() ~ 'x'.zfill(3) }} {{ 'a,b'.split(',') }} {{ 'Ab'.casefold() }}")
    assert render(text, data) == (
        "6 7.5 [1, 2, 3] [3, 1, 2] [('a', 2), ('b', 1)] [[[[1, 2]]]] 60 3-1-2 1.3 True A B x00x ['a', 'b'] ab")


def test_the_time_budget_holds_in_a_worker_thread(monkeypatch):
    # previews render in asyncio.to_thread: the budget is the CPU time of that thread
    monkeypatch.setattr(templating, "MAX_RENDER_SECONDS", -1.0)
    with pytest.raises(TemplateLimit, match="longer than"):
        asyncio.run(asyncio.to_thread(render, "{% for i in range(3) %}{{ i }}{% endfor %}"))
    monkeypatch.setattr(templating, "MAX_RENDER_SECONDS", 10.0)
    assert asyncio.run(asyncio.to_thread(render, "{% for i in range(3) %}{{ i }}{% endfor %}")) == "012"


def test_abuse_in_html_and_subject_too():
    with pytest.raises(TemplateLimit):
        render('{{ "<" * 300000 }}', html=True)
    with pytest.raises(TemplateLimit):
        Compiled(MessageTemplate(id="t", channel="email", subject='{{ "a" * 10**9 }}')).render({})


def test_slow_templates_stop_at_the_deadline(monkeypatch):
    monkeypatch.setattr(templating, "MAX_RENDER_SECONDS", -1.0)  # every check is past the deadline
    with pytest.raises(TemplateLimit, match="longer than"):
        render("{% for i in range(3) %}{{ i }}{% endfor %}")


def test_ordinary_templates_render_unchanged():
    data = {"a": "A&", "b": 2, "xs": [1, 2, 3], "big": "y" * 100_000}
    text = ('{% for x in xs %}{{ loop.index }}:{{ x }}{% if not loop.last %}, {% endif %}{% endfor %} '
            '{{ "%s items"|format(xs|length) }} {{ "{} {}".format(a, b) }}{% set y %}Y{{ a }}{% endset %} '
            '{{ y }} {{ xs|join(", ") }} {{ xs|tojson }} {{ "-" * 20 }} {{ (xs * 2)|sum }} {{ 2**64 }} '
            "{{ range(3)|list }} {{ big|length }} {{ a|center(9) }}|{{ big|truncate(10) }}")
    assert render(text, data) == (
        "1:1, 2:2, 3:3 3 items A& 2 YA& 1, 2, 3 [1, 2, 3] -------------------- 12 18446744073709551616 "
        f"[0, 1, 2] 100000 {'A&'.center(9)}|yyyyyyy...")
    html = '<b>{{ a ~ "<" }}</b>{% autoescape false %}{{ a ~ "<" }}{% endautoescape %}{{ "<i>"|safe }}{{ big }}'
    assert render(html, data, html=True) == "<b>A&amp;&lt;</b>A&<<i>" + "y" * 100_000


@pytest.mark.parametrize("parts, data, reason", [
    ({"subject": "Hi {{ name }}"}, {"name": "a\x0bb"}, "the subject contains a line break or control character"),
    ({"subject": "Hi {{ name }}"}, {"name": "a\nBcc: x@y.z"}, "the subject contains a line break or control character"),
    ({"subject": "{{ 'x' * 999 }}"}, {}, "the subject is longer than 998 characters"),
    ({"text": "{{ name }}"}, {"name": "a\x00b"}, "the text contains a NUL character"),
    ({"html": "{{ name }}"}, {"name": "a\x00b"}, "the html contains a NUL character"),
])
def test_rendered_content_obeys_the_rules_of_a_requests_content(parts, data, reason):
    # the rendered Content travels to the ChannelShard decoded as policy.types.Content
    with pytest.raises(templating.TemplateOutput) as e:
        Compiled(MessageTemplate(id="t", channel="email", **parts)).render(data)
    assert render_error(e.value) == reason


def test_a_trailing_newline_in_a_subject_is_still_stripped():
    c = Compiled(MessageTemplate(id="t", channel="email", subject="{% if a %}\n  Hi {{ a }}\n{% endif %}\n"))
    assert c.render({"a": "Ada"}).subject == "Hi Ada"
