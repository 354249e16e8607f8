"""engine/stream.py on a toy byte vocabulary, where each token's bytes are chosen by hand: characters cut between
tokens and at the end of the stream, a single-string stop, hold-back lengths, exact deltas."""

import pytest

from visualrwkv.engine.stream import (
    IncrementalDetokenizer,
    StopStringFilter,
    TextStream,
    decode_final_answer,
    final_answer,
    find_stop,
    truncate_at_stop,
)

# "é" is C3 A9 and "€" is E2 82 AC in UTF-8; each byte is a token of its own here
TOKENS = {
    0: b"a", 1: b"b", 2: b"\n", 3: b"\xc3", 4: b"\xa9", 5: b"\xe2", 6: b"\x82", 7: b"\xac", 8: b"#", 9: b"\xff",
    10: b"ab", 11: b"\n\n",
}  # fmt: skip


def token_bytes(token: int) -> bytes:
    return TOKENS[token]


def test_a_character_split_over_tokens_comes_out_whole():
    d = IncrementalDetokenizer(token_bytes)
    assert d.push(0) == "a"
    assert d.push(5) == ""  # first of three bytes of "€": held
    assert d.push(6) == ""
    assert d.push(7) == "€"
    assert d.push(3) == ""
    assert d.push(4) == "é"
    assert d.flush() == ""


def test_a_character_cut_at_the_end_of_the_stream_becomes_one_replacement_character():
    d = IncrementalDetokenizer(token_bytes)
    assert d.push_many([0, 5, 6]) == "a"  # "€" lacks its last byte
    assert d.flush() == "\ufffd"
    d = IncrementalDetokenizer(token_bytes)
    assert d.push_many([1, 3]) == "b"
    assert d.flush() == "\ufffd"
    # the whole stream equals the one-shot decode with errors="replace"
    assert "a\ufffd" == (b"a\xe2\x82").decode("utf-8", "replace")


def test_an_invalid_byte_is_replaced_at_once():
    d = IncrementalDetokenizer(token_bytes)
    assert d.push(9) == "\ufffd"
    assert d.push(0) == "a"


def test_text_stream_finish_emits_the_cut_character():
    stream = TextStream(token_bytes)
    assert [stream.push(t) for t in (0, 1, 3)] == ["a", "b", ""]
    assert stream.finish() == "\ufffd"
    assert stream.text == "ab\ufffd"
    assert not stream.stopped


def test_text_stream_default_stop_is_a_blank_line():
    stream = TextStream(token_bytes)
    assert stream.push(0) == "a"
    assert stream.push(2) == ""  # could be the start of "\n\n"
    assert stream.push(2) == ""  # it was: cut, not emitted
    assert stream.stopped
    assert stream.push(1) == ""
    assert stream.finish() == ""
    assert stream.text == "a"


def test_text_stream_stopped_mid_character_emits_nothing_more():
    stream = TextStream(token_bytes, ["#"])
    assert stream.push(0) == "a"
    assert stream.push(8) == ""
    assert stream.stopped
    assert stream.push(3) == ""
    assert stream.finish() == ""
    assert stream.text == "a"


def test_a_held_newline_is_released_when_the_stream_ends():
    stream = TextStream(token_bytes)
    assert stream.push(0) == "a"
    assert stream.push(2) == ""
    assert stream.finish() == "\n"
    assert stream.text == "a\n" and not stream.stopped


def test_a_single_string_stop_is_one_stop_not_its_characters():
    f = StopStringFilter("##")
    assert f.stop == ["##"]
    assert f.push("a#b") == "a#b"
    assert f.push("#") == ""
    assert f.push("#c") == ""
    assert f.stopped
    assert truncate_at_stop("a#b##c", "##") == "a#b"
    stream = TextStream(token_bytes, "##")
    assert "".join(stream.push(t) for t in (0, 8, 1, 8, 8, 0)) == "a#b"
    assert stream.stopped


@pytest.mark.parametrize("bad", [[""], ["ok", ""], [1], "", [None]])
def test_empty_or_non_string_stops_are_refused(bad):
    with pytest.raises(ValueError, match="stop strings must be non-empty strings"):
        StopStringFilter(bad)
    with pytest.raises(ValueError, match="stop strings must be non-empty strings"):
        truncate_at_stop("text", bad)


def test_hold_back_is_the_longest_suffix_that_starts_a_stop():
    f = StopStringFilter(["abc", "bd"])
    assert f.push("xab") == "x"  # "ab" may become "abc"
    assert f.push("x") == "abx"
    assert f.push("xb") == "x"  # "b" may become "bd" (or nothing)
    assert f.push("d") == ""
    assert f.stopped


def test_hold_back_takes_the_longest_of_several_prefixes():
    f = StopStringFilter(["b", "aaab"])
    assert f.push("xaaa") == "x"  # "aaa" is a prefix of "aaab"; "b" has no proper prefix
    assert f.flush() == "aaa"
    f = StopStringFilter(["ab", "aaab"])
    assert f.push("xaa") == "x"  # "aa" (of "aaab") longer than "a" (of "ab")
    assert f.push("c") == "aac"


def test_flush_without_a_stop_gives_back_the_held_text_once():
    f = StopStringFilter(["\n\n"])
    assert f.push("a\n") == "a"
    assert f.flush() == "\n"
    assert f.flush() == ""


def test_text_after_the_stop_in_the_same_delta_is_dropped():
    f = StopStringFilter(["\n\n"])
    assert f.push("yes\n\nUser: no") == "yes"
    assert f.stopped and f.flush() == ""


def test_find_stop_positions():
    assert find_stop("abcd", ["cd"]) == 2
    assert find_stop("abcd", ["x"]) is None
    assert find_stop("abcd", ["d", "bc"]) == 1  # "bc" ends at 3, before "d" ends at 4
    assert find_stop("abcd", ["bcd", "cd"]) == 1  # both end at 4: the longer wins
    assert find_stop("abcd", ["cd", "bcd"]) == 1
    assert find_stop("xyxy", ["y"]) == 1  # the first occurrence
    assert find_stop("", ["a"]) is None


def test_final_answer_cuts_at_the_first_blank_line_and_strips():
    assert final_answer(" Red\n\nUser: more\n\nagain") == "Red"
    assert final_answer("\n\nRed") == ""
    assert final_answer("a\nb \n") == "a\nb"
    decode = lambda ids: b"".join(TOKENS[i] for i in ids).decode("utf-8", "replace")  # noqa: E731
    assert decode_final_answer(decode, (0, 1, 11, 0)) == "ab"
    assert decode_final_answer(decode, [10, 2, 0]) == "ab\na"
