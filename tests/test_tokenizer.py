import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv import Tokenizer

tok = Tokenizer()

VECTORS = {
    "User:": [24281, 59],
    "User: ": [24281, 59, 33],
    "Assistant:": [5585, 41693, 59],
    "Assistant: yes\n\n": [5585, 41693, 59, 22796, 261],
    "\n\n": [261],
    "\n": [11],
    "<image>": [61, 34733, 63],
    "Today is a beautiful day. 今天是美好的一天。": [33520, 4600, 332, 59219, 21509, 47, 33, 10381, 11639, 13091,
                                               15597, 11685, 14734, 10250, 11639, 10080],
}


@pytest.mark.parametrize("text", list(VECTORS))
def test_spec_vectors(text):
    assert tok.encode(text) == VECTORS[text]
    assert tok.decode(VECTORS[text]) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip(s):
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_ids_equal_the_reference_trie_tokenizer(s):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    import rwkv

    global _trie
    if "_trie" not in globals():
        _trie = TRIE_TOKENIZER(os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt"))
    assert tok.encode(s) == _trie.encode(s)


def test_partial_utf8_and_special_ids():
    ids = tok.encode("今")
    assert tok.decode_bytes(ids) == "今".encode()
    assert tok.decode([200]) == "\ufffd"  # a lone UTF-8 lead byte is not text yet
    assert tok.decode([0]) == ""
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([65536])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
