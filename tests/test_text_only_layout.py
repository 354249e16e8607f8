"""Sequences without an image, as the official v6.0 code lays them out (SPEC §5.4 step 5).

The facts, from the official `VisualRWKV-v6/v6.0/src/model.py` (`preparing_embedding`,
`bidirectional_forward`, `generate`) and `evaluate.py`:
- every row is [P × emb(0)] + [the image's num_tokens vectors] + [text], where P is the longest
  pre-image prefix among the batch's one-image rows (0 for a batch of one: every `generate` call);
- a text-only row's image vectors are the projected features set to zero, so at P = 0 the row is
  num_tokens zero vectors, then the whole text; block 0's ln0 turns them into its bias;
- on odd layers the span [P, P + num_tokens − 1) (the patches, CLS excluded) is reversed before the
  block and restored after it, for every row, image or not;
- generation re-runs that forward over the whole sequence for every new token.
The reference below is written from those facts with the model's blocks, without splice or scanning.
"""

import pytest
import torch

from visualrwkv.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, STOP_TOKEN_INDEX
from visualrwkv.engine.engine import Engine
from visualrwkv.engine.model_args import TEXT_ONLY_LAYOUTS as CLI_LAYOUTS
from visualrwkv.engine.sampling import SamplingParams
from visualrwkv.model import TEXT_ONLY_LAYOUTS, VisualRWKV, VisualRWKVConfig
from visualrwkv.prompts import build_inference_prompt
from visualrwkv.rwkv.model import RWKVConfig
from visualrwkv.scanning import ImageSpan
from visualrwkv.testing import random_rwkv6_state_dict
from visualrwkv.vision.encoders import VisionConfig

V = 1000
C = 128
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=42, patch_size=14)  # a 3×3 patch grid + CLS = 10 tokens, patches at [0, 9)


def tiny_model(layout=None, n_layer=4, seed=0) -> VisualRWKV:
    torch.manual_seed(seed)
    config = VisualRWKVConfig(rwkv=RWKVConfig(n_embd=C, n_layer=n_layer, vocab_size=V),
                              vision=VisionConfig("clip", hf_config=TINY_CLIP), text_only_layout=layout)
    model = VisualRWKV(config)
    model.rwkv.load_state_dict(random_rwkv6_state_dict(C, n_layer, vocab_size=V, seed=seed))
    torch.nn.init.normal_(model.proj.weight, std=0.5)
    return model.eval()


def ids(n, seed):
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def official_text_only_logits(model: VisualRWKV, text: list[int], prefix: int = 0) -> torch.Tensor:
    """The official forward of one text-only row: prefix × emb(0), num_tokens zeros, the text;
    the patch span [prefix, prefix + num_tokens − 1) reversed around every odd block."""
    n_tok = model.vit.num_tokens
    lm = model.rwkv
    x = torch.cat([lm.emb(torch.zeros(prefix, dtype=torch.long)), torch.zeros(n_tok, C),
                   lm.emb(torch.tensor(text))])[None]
    start, end = prefix, prefix + n_tok - 1
    for i, block in enumerate(lm.blocks):
        if i % 2 == 1:
            x = x.clone()
            x[:, start:end] = x[:, start:end].flip(1)
        x = block(x)[0]
        if i % 2 == 1:
            x = x.clone()
            x[:, start:end] = x[:, start:end].flip(1)
    return lm.head(lm.ln_out(x))[0]


def test_the_default_layout_per_version_and_validation():
    assert TEXT_ONLY_LAYOUTS == CLI_LAYOUTS == ("image-slot", "plain")
    assert tiny_model().config.text_only_layout == "image-slot"  # v6.0 (CLIP)
    config = tiny_model().config.to_dict()
    assert config["text_only_layout"] == "image-slot"
    del config["text_only_layout"]  # a config.json written before the field existed
    assert VisualRWKVConfig.from_dict(config).text_only_layout == "image-slot"
    stack = VisionConfig("stack", path="/nonexistent")  # v7.00: text-only batches are embedded plainly
    assert VisualRWKVConfig(rwkv=RWKVConfig(n_embd=C, n_layer=2, vocab_size=V), vision=stack).text_only_layout == "plain"
    with pytest.raises(ValueError, match="text_only_layout must be one of"):
        VisualRWKVConfig(rwkv=RWKVConfig(n_embd=C, n_layer=2, vocab_size=V), vision=stack, text_only_layout="zeros")


def test_a_text_only_row_is_the_image_slot_then_the_text():
    model = tiny_model()
    text = ids(7, 1)
    labels = [IGNORE_INDEX] * 3 + text[3:]
    with torch.no_grad():
        batch = model.splice([text], [torch.zeros(0, 10, C)], [labels])
        emb = model.rwkv.emb(torch.tensor(text))
    assert batch.lengths == [17]
    assert torch.equal(batch.embeds[0, :10], torch.zeros(10, C))
    assert torch.equal(batch.embeds[0, 10:], emb)
    assert batch.spans == [[ImageSpan(0, 9, (3, 3))]]  # the CLS position (9) is not flipped
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 13 + text[3:]
    plain = tiny_model("plain")
    with torch.no_grad():
        batch = plain.splice([text], [torch.zeros(0, 10, C)], [labels])
    assert batch.lengths == [7] and batch.spans == [[]] and torch.equal(batch.embeds[0], emb)
    assert plain.text_only_positions == 0 and model.text_only_positions == 10


def test_text_only_forward_equals_the_official_layout_computed_independently():
    model = tiny_model()
    text = ids(9, 2)
    with torch.no_grad():
        reference = official_text_only_logits(model, text)
        logits, _ = model([text], [torch.zeros(0, 3, 42, 42)])
        last, _ = model.prefill(text)
        plain, _ = tiny_model("plain")([text], [torch.zeros(0, 3, 42, 42)])
    assert logits.shape == (1, 19, V)
    torch.testing.assert_close(logits[0], reference, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(last, reference[-1], atol=2e-5, rtol=1e-5)
    # the layout matters: the plain row's logits are not those of the text after the slot
    assert (plain[0] - reference[10:]).abs().max() > 1e-2
    # the flip matters too: the same row without it is further from the official numbers
    unflipped = tiny_model(n_layer=4)
    unflipped.config.scanning = "unidirection"
    with torch.no_grad():
        no_flip, _ = unflipped([text], [torch.zeros(0, 3, 42, 42)])
    assert (no_flip[0, 10:] - reference[10:]).abs().max() > 1e-4


def test_greedy_generation_equals_the_official_rerun_generation():
    model = tiny_model()
    prompt = build_inference_prompt("hello there", has_image=False, tokenizer=model.tokenizer)
    prompt = [t % V for t in prompt]
    with torch.no_grad():
        ours = model.generate_greedy(prompt, max_new_tokens=6, stop_ids=(STOP_TOKEN_INDEX,))
        seq, official = list(prompt), []
        for _ in range(6):  # the official generate: the whole forward again for every token
            token = int(official_text_only_logits(model, seq)[-1].argmax())
            if token == STOP_TOKEN_INDEX:
                break
            official.append(token)
            seq.append(token)
    assert ours == official and len(ours) == 6


def test_a_continuation_from_a_state_gets_no_second_slot():
    model = tiny_model()
    a, b = ids(5, 3), ids(4, 4)
    with torch.no_grad():
        whole, _ = model.prefill(a + b)
        _, state = model.prefill(a)
        resumed, _ = model.prefill(b, state=state)
    torch.testing.assert_close(resumed, whole, atol=2e-5, rtol=1e-5)


def test_batches_are_row_invariant_unlike_the_official_left_padding():
    """A text-only row batched with an image row equals the row alone (P = 0); the official code
    would put P × emb(0) before its slot, P being the image row's pre-image prefix length."""
    model = tiny_model()
    text, image_prompt = ids(6, 5), ids(4, 6) + [IMAGE_TOKEN_INDEX] + ids(3, 7)
    pixels = torch.randn(1, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both, _ = model([text, image_prompt], [torch.zeros(0, 3, 42, 42), pixels])
        alone, _ = model([text], [torch.zeros(0, 3, 42, 42)])
        official_mixed = official_text_only_logits(model, text, prefix=4)
    torch.testing.assert_close(both[0, :16], alone[0], atol=5e-5, rtol=1e-5)  # batched GEMMs round differently
    torch.testing.assert_close(alone[0], official_text_only_logits(model, text), atol=2e-5, rtol=1e-5)
    assert (official_mixed[4:] - alone[0]).abs().max() > 1e-4  # the documented deviation


def test_engine_text_only_requests_use_the_layout_and_count_the_slot():
    model = tiny_model()
    with Engine(model, max_batch_size=4) as engine:
        prompt = engine.build_prompt("what is two plus two?")
        prompt.ids[:] = [t % V for t in prompt.ids]
        assert engine.count_prompt_tokens(prompt) == len(prompt.ids) + 10
        result = engine.submit(prompt, SamplingParams(temperature=0.0, max_tokens=5)).result()
        again = engine.submit(prompt, SamplingParams(temperature=0.0, max_tokens=5)).result()
    expected = model.generate_greedy(prompt.ids, max_new_tokens=5)
    assert result.token_ids[:len(expected)] == expected[:len(result.token_ids)]
    assert result.prompt_tokens == len(prompt.ids) + 10
    assert again.cached_tokens == len(prompt.ids) + 10 and again.token_ids == result.token_ids


def test_blank_image_is_zero_pixels_through_the_encoder():
    """evaluate.py's stand-in: torch.zeros(1, 3, crop_h, crop_w), i.e. already-normalised pixels of 0,
    encoded and projected like a real image (the question then has `<image>` before it)."""
    model = tiny_model()
    blank = model.vit.blank_pixels()
    assert blank.shape == (1, 3, 42, 42) and not blank.any()
    prompt = build_inference_prompt("<image>\nwhat is it?", has_image=True, tokenizer=model.tokenizer)
    prompt = [t if t == IMAGE_TOKEN_INDEX else t % V for t in prompt]
    with torch.no_grad():
        from_tensor_list, _ = model.prefill(prompt, [blank[0]])
        from_pixels, _ = model.prefill(prompt, blank)
        features = model.encode_images(blank)
    torch.testing.assert_close(from_tensor_list, from_pixels)
    assert features.abs().sum() > 0  # unlike the text-only slot, the blank image's vectors are not zero


def test_the_cli_flag_overrides_the_config(tmp_path, capsys):
    from visualrwkv.cli import main
    from visualrwkv.engine.defaults import load_model

    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    assert load_model(tmp_path / "m").config.text_only_layout == "image-slot"
    assert load_model(tmp_path / "m", text_only_layout="plain").text_only_positions == 0
    with pytest.raises(ValueError, match="text_only_layout must be one of"):
        load_model(tmp_path / "m", text_only_layout="nothing")
    with pytest.raises(SystemExit):
        main(["ask", "--model", str(tmp_path / "m"), "--text-only-layout", "nothing", "hi"])
    assert "invalid choice" in capsys.readouterr().err
