"""The preference center's language: the person's locale's primary subtag when
the center speaks it, else English; every language has every English key."""

from engine.http.center_text import TEXT, language, words


def test_the_language_follows_the_locale_and_falls_back_to_english():
    assert [language(x) for x in ("de-AT", "de_DE", "ES", "fr", "", None, "x-klingon")] == [
        "de", "de", "es", "en", "en", "en", "en"]
    assert words("de")["save"] == "Speichern" and words("fr")["save"] == "Save"


def test_every_language_says_everything_english_says_with_the_same_placeholders():
    for lang, text in TEXT.items():
        assert set(text) == set(TEXT["en"]), lang
        for key, english in TEXT["en"].items():
            assert [p for p in ("{channel}", "{zone!r}", "{reason}") if p in english] == [
                p for p in ("{channel}", "{zone!r}", "{reason}") if p in text[key]], (lang, key)
