"""A long prompt outside autograd goes through the blocks a segment at a time (RWKV.prefill_segment),
carrying the state: the same logits and state as one pass, and no segment cuts an image's span."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.constants import IMAGE_TOKEN_INDEX
from visualrwkv.scanning import ImageSpan, prefill_segments
from visualrwkv.testing import random_rwkv6, random_rwkv7

from test_model_scanning import V, ids, tiny_model


@st.composite
def rows_of_spans(draw):
    seq_len = draw(st.integers(1, 120))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        row, at = [], 0
        while at < seq_len and draw(st.booleans()):
            start = draw(st.integers(at, seq_len - 1))
            cols = draw(st.integers(1, max(1, min(6, seq_len - start))))
            rows_ = draw(st.integers(1, max(1, (seq_len - start) // cols)))
            row.append(ImageSpan(start, start + rows_ * cols, (rows_, cols)))
            at = start + rows_ * cols
        rows.append(row)
    return rows, seq_len


@settings(max_examples=200, deadline=None)
@given(rows_of_spans(), st.integers(1, 40))
def test_segments_cover_the_sequence_in_order_and_never_cut_a_span(spans_and_len, size):
    spans, seq_len = spans_and_len
    pieces = prefill_segments(spans, seq_len, size)
    assert pieces[0][0] == 0 and pieces[-1][1] == seq_len
    assert all(a < b for a, b in pieces) and all(p[1] == q[0] for p, q in zip(pieces, pieces[1:]))
    for row in spans:
        for span in row:  # each span lies inside one piece
            assert any(a <= span.start and span.end <= b for a, b in pieces), (span, pieces)
    for a, b in pieces:  # a piece is over-long only to hold a span (or several overlapping ones) whole
        if b - a > size:
            assert any(s.start < a + size < s.end for row in spans for s in row)


def test_segments_of_overlapping_spans_in_different_rows():
    spans = [[ImageSpan(0, 10, (2, 5))], [ImageSpan(5, 20, (3, 5))]]  # a cut at 5 or 10 would split one
    assert prefill_segments(spans, 30, 8) == [(0, 20), (20, 28), (28, 30)]
    with pytest.raises(ValueError, match="segment size must be positive"):
        prefill_segments(spans, 30, 0)


@pytest.mark.parametrize("make", [random_rwkv6, random_rwkv7])
def test_language_model_prefill_in_segments_equals_one_pass(make):
    lm = make(64, 2, vocab_size=V, seed=3).eval()
    tokens = torch.randint(0, V, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole, whole_state = lm(tokens)  # 45 <= 512: one pass
        lm.prefill_segment = 8  # 6 segments, the last one short
        pieces, state = lm(tokens)
        last, last_state = lm(tokens, logits="last")
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, whole[:, -1], rtol=1e-5, atol=1e-5)
    for a, b in ((state, whole_state), (last_state, whole_state)):
        for name in ("att_shift", "wkv", "ffn_shift"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scanning,version", [("bidirection", 6), ("multidirection", 6), ("bidirection", 7)])
def test_visual_prefill_in_segments_equals_one_pass(scanning, version):
    model = tiny_model(scanning, version=version)
    pixels = torch.randn(2, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    prompt = ids(7, 0) + [IMAGE_TOKEN_INDEX] + ids(9, 1) + [IMAGE_TOKEN_INDEX] + ids(6, 2)  # 22 text + 2 × 9 patches
    logits, state = model.prefill(prompt, pixels)
    model.rwkv.prefill_segment = 4  # shorter than an image: segments end before or after each span
    seg_logits, seg_state = model.prefill(prompt, pixels)
    assert not torch.equal(seg_state.wkv, torch.zeros_like(seg_state.wkv))
    torch.testing.assert_close(seg_logits, logits, rtol=1e-5, atol=1e-5)
    # the states reach ~30 here: fp32 rounding of either pass is ~1e-6 of that (both are ~3e-5 from float64)
    torch.testing.assert_close(seg_state.wkv, state.wkv, rtol=1e-5, atol=1e-5 * state.wkv.abs().max().item())
    # and from a carried state (a follow-up), text only
    more = ids(13, 5)
    model.rwkv.prefill_segment = 512
    follow, _ = model.prefill(more, (), state)
    model.rwkv.prefill_segment = 5
    seg_follow, _ = model.prefill(more, (), seg_state)
    torch.testing.assert_close(seg_follow, follow, rtol=1e-5, atol=1e-5)


def test_training_forward_is_never_segmented():
    """Under autograd the whole sequence goes through each block at once (gradient checkpointing and
    the loss see one pass); a segment size smaller than the input changes nothing there."""
    lm = random_rwkv6(64, 2, vocab_size=V, seed=4)
    tokens = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(2))
    lm.prefill_segment = 3
    calls = []
    handle = lm.blocks[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    lm(tokens)[0].sum().backward()
    with torch.no_grad():
        lm(tokens)
    handle.remove()
    assert calls[0] == 20 and calls[1:] == [3] * 6 + [2]


def test_the_segment_length_follows_the_weights():
    """512 positions over float weights, 1024 over quantized ones (each segment dequantizes them again);
    an int set on the model fixes it."""
    from visualrwkv.rwkv.precision import set_precision

    lm = random_rwkv6(64, 2, vocab_size=300, seed=0)
    assert lm.segment_length() == 512
    assert set_precision(random_rwkv6(64, 2, vocab_size=300, seed=0), "bfloat16").segment_length() == 512
    quantized = set_precision(random_rwkv6(64, 2, vocab_size=300, seed=0), "int8")
    assert quantized.segment_length() == 1024
    quantized.prefill_segment = 7
    assert quantized.segment_length() == 7
