"""Message templates: sandboxed rendering, HTML autoescape, strict data, locale fallback."""

import jinja2
import pytest

from policy.templating import Compiled, MessageTemplate, locale_chain, pick, render_error, syntax_errors


def compiled(**parts) -> Compiled:
    return Compiled(MessageTemplate(id="t", channel="email", **parts))


def test_renders_each_part_and_escapes_only_html():
    c = compiled(subject="{{ n }} new jobs for {{ name }}", text="Hi {{ name }}", html="<p>Hi {{ name }}</p>")
    content = c.render({"n": 3, "name": "Ada <admin>"})
    assert content.subject == "3 new jobs for Ada <admin>"
    assert content.text == "Hi Ada <admin>"
    assert content.html == "<p>Hi Ada &lt;admin&gt;</p>"
    assert content.data == {"n": 3, "name": "Ada <admin>"}


def test_missing_data_is_an_error_not_an_empty_string():
    with pytest.raises(jinja2.UndefinedError) as e:
        compiled(subject="Hello {{ name }}").render({})
    assert render_error(e.value) == "missing data: 'name' is undefined"


def test_the_sandbox_keeps_templates_out_of_python():
    with pytest.raises(jinja2.exceptions.SecurityError):
        compiled(text="{{ ''.__class__.__mro__[1].__subclasses__() }}").render({})
    with pytest.raises(jinja2.exceptions.SecurityError):
        compiled(text="{% set x = [] %}{{ x.append(1) }}").render({})


def test_syntax_errors_name_the_part_and_line():
    t = MessageTemplate(id="t", channel="email", subject="ok", text="line one\n{{ broken", html=None)
    assert syntax_errors(t) == [("text", "line 2: unexpected end of template, expected 'end of print statement'.")]
    assert syntax_errors(MessageTemplate(id="t", channel="email")) == [("$", "a template needs a subject, text or html")]


def test_locale_falls_back_to_language_then_default():
    assert locale_chain("de-AT") == ["de-AT", "de", "default"]
    assert locale_chain("en") == ["en", "default"]
    parts = {"de": compiled(subject="Hallo"), "default": compiled(subject="Hello")}
    assert pick(parts, "de-AT").render({}).subject == "Hallo"
    assert pick(parts, "fr").render({}).subject == "Hello"
    assert pick({"de": compiled(subject="Hallo")}, "fr") is None
