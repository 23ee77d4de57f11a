"""Model Markdown rendered as Telegram HTML and split into balanced messages within Telegram's limits."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import example, given, settings
from hypothesis import strategies as st

from aria.outbox import CAPTION_LIMIT, TEXT_LIMIT
from aria.telegram.markup import literal_html, plain_text, split_html, telegram_parts, to_html, utf16_len


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ok = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.ok = False


def balanced(markup: str) -> bool:
    checker = _Balance()
    checker.feed(markup)
    checker.close()
    return checker.ok and not checker.stack


def squeezed(text: str) -> str:
    return "".join(text.split())


def test_bold_italics_and_inline_code_become_tags() -> None:
    assert to_html("**Bold**, *it* and `x < 1`") == "<b>Bold</b>, <i>it</i> and <code>x &lt; 1</code>"


def test_fenced_code_keeps_its_language_and_escapes() -> None:
    assert to_html("```python\nif a < b & c:\n    pass\n```") == (
        '<pre><code class="language-python">if a &lt; b &amp; c:\n    pass\n</code></pre>')


def test_links_lists_headings_and_nesting() -> None:
    rendered = to_html("# Title\n\n- one\n- **two _nested_**\n\n[docs](https://example.com/?a=1&b=2)")
    assert rendered == ('<b>Title</b>\n\n• one\n• <b>two <i>nested</i></b>\n\n'
                        '<a href="https://example.com/?a=1&amp;b=2">docs</a>')
    assert balanced(rendered)


def test_plain_text_with_angle_brackets_and_ampersands_is_escaped() -> None:
    assert to_html("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    assert plain_text(to_html("a < b && c > d")) == "a < b && c > d"


def test_literal_text_shows_exactly_what_was_written() -> None:
    text = "rm -rf /tmp/*_old_* `x` **y** <z> & w"
    assert plain_text(literal_html(text)) == text
    assert "<" not in literal_html(text).replace("&lt;", "")


def test_a_long_answer_splits_at_paragraph_boundaries() -> None:
    paragraphs = [f"Paragraph {i} says something. " * 9 for i in range(40)]
    answer = "\n\n".join(p.strip() for p in paragraphs)
    assert len(answer) > 10_000
    parts = split_html(to_html(answer), TEXT_LIMIT)
    assert len(parts) >= 3
    assert all(utf16_len(part) <= TEXT_LIMIT for part in parts)
    for part in parts:  # every part is whole paragraphs
        assert part.startswith("Paragraph ") and part.endswith("says something.")
        assert all(p.strip() in paragraphs[int(p.split()[1])] for p in part.split("\n\n"))


def test_a_long_paragraph_splits_at_a_sentence_not_mid_word() -> None:
    answer = " ".join(f"Sentence {i} is fine." for i in range(600))
    parts = split_html(to_html(answer), TEXT_LIMIT)
    assert len(parts) > 1
    assert all(part.endswith(".") and utf16_len(part) <= TEXT_LIMIT for part in parts)


def test_a_code_block_that_fits_is_not_split() -> None:
    code = "```\n" + "\n".join(f"line {i}" for i in range(300)) + "\n```"
    answer = "Intro paragraph. " * 120 + "\n\n" + code
    parts = split_html(to_html(answer), TEXT_LIMIT)
    assert [part.count("<pre>") for part in parts] == [0, 1]
    assert parts[1].startswith("<pre><code>line 0")


def test_a_huge_code_block_splits_into_balanced_parts_at_lines() -> None:
    code = "```python\n" + "\n".join(f"    value_{i} = compute({i}) & mask  # <{i}>" for i in range(150)) + "\n```"
    assert len(code) > 6000
    parts = split_html(to_html(code), TEXT_LIMIT)
    assert len(parts) == 2
    for part in parts:
        assert utf16_len(part) <= TEXT_LIMIT
        assert balanced(part)
        assert part.startswith('<pre><code class="language-python">    value_')  # indentation kept
        assert part.endswith("</code></pre>")
    assert squeezed(plain_text("".join(parts))) == squeezed(plain_text(to_html(code)))


def test_bold_longer_than_the_limit_is_closed_and_reopened() -> None:
    parts = split_html(to_html("**" + "bold words " * 500 + "end**"), TEXT_LIMIT)
    assert len(parts) == 2
    assert all(balanced(part) and part.startswith("<b>") and part.endswith("</b>") for part in parts)


def test_a_photo_caption_takes_what_fits_and_the_rest_follows() -> None:
    answer = "\n\n".join(f"**Point {i}**: " + "detail " * 30 for i in range(20))
    parts = telegram_parts(to_html(answer), photo=True, text_limit=TEXT_LIMIT, caption_limit=CAPTION_LIMIT)
    (caption, is_caption), *rest = parts
    assert is_caption and utf16_len(caption) <= CAPTION_LIMIT and balanced(caption)
    assert rest and not any(flag for _, flag in rest)
    assert squeezed("".join(plain_text(text) for text, _ in parts)) == squeezed(plain_text(to_html(answer)))


def test_emoji_count_as_two_utf16_units() -> None:
    parts = split_html("🙂 " * 3000, TEXT_LIMIT)
    assert all(utf16_len(part) <= TEXT_LIMIT for part in parts)
    assert sum(part.count("🙂") for part in parts) == 3000


_MARKDOWN_BITS = st.sampled_from(["**", "*", "_", "`", "```\n", "```py\n", "\n", "\n\n", " ", "- ", "# ", "> ",
                                  "<", ">", "&", "[a](https://x.io)", ". ", "🙂", "word", "x" * 50])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_MARKDOWN_BITS, st.text(max_size=30)), max_size=400), st.sampled_from([200, 1024, 4096]))
# A code block cut where no boundary fits (not at a newline) loses nothing at the cut.
@example(["**"] * 11 + ["```py\n", "x" * 50] + ["000000000000000000&\U00010000\U00010000\U00010000"] * 2, 200)
def test_any_text_splits_into_balanced_parts_within_the_limit(bits: list[str], limit: int) -> None:
    rendered = to_html("".join(bits))
    parts = split_html(rendered, limit)
    assert all(utf16_len(part) <= limit for part in parts)
    assert squeezed("".join(plain_text(part) for part in parts)) == squeezed(plain_text(rendered))
    if balanced(rendered):
        assert all(balanced(part) for part in parts)
