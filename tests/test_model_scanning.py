"""The training forward (whole spliced sequences, parallel) equals the inference path
(layer-wise prefill of the prefix, then recurrent decoding) for every scanning mode."""

import pytest
import torch

from visualrwkv.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from visualrwkv.model import VisualRWKV, VisualRWKVConfig, sample_level_loss
from visualrwkv.rwkv.model import RWKVConfig
from visualrwkv.scanning import ImageSpan, inverse, permute, scan_permutation
from visualrwkv.testing import random_rwkv6_state_dict, random_rwkv7_state_dict
from visualrwkv.vision.encoders import VisionConfig

V = 1000
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=42, patch_size=14)  # a 3×3 patch grid + CLS


def tiny_model(scanning: str, seed: int = 0, version: int = 6) -> VisualRWKV:
    torch.manual_seed(seed)
    config = VisualRWKVConfig(rwkv=RWKVConfig(n_embd=128, n_layer=4, vocab_size=V, version=version),
                              vision=VisionConfig("clip", hf_config=TINY_CLIP), scanning=scanning)
    model = VisualRWKV(config)
    random_weights = random_rwkv7_state_dict if version == 7 else random_rwkv6_state_dict
    model.rwkv.load_state_dict(random_weights(128, 4, vocab_size=V, seed=seed))
    torch.nn.init.normal_(model.proj.weight, std=0.5)
    return model.eval()


def ids(n, seed):
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_permutations_are_what_the_spec_says():
    span = ImageSpan(2, 8, (2, 3))  # patches 0..5 in raster order at positions 2..7
    rev = scan_permutation([[span]], 10, "bidirection", 1)[0].tolist()
    assert rev == [0, 1, 7, 6, 5, 4, 3, 2, 8, 9]
    assert scan_permutation([[span]], 10, "bidirection", 2) is None
    col = scan_permutation([[span]], 10, "multidirection", 2)[0].tolist()
    assert col == [0, 1, 2, 5, 3, 6, 4, 7, 8, 9]  # column-major over the 2×3 grid
    colrev = scan_permutation([[span]], 10, "multidirection", 3)[0].tolist()
    assert colrev == [0, 1, 7, 4, 6, 3, 5, 2, 8, 9]
    x = torch.randn(1, 10, 4)
    index = scan_permutation([[span]], 10, "multidirection", 3)
    assert torch.equal(permute(permute(x, index), inverse(index)), x)


@pytest.mark.parametrize("scanning,n_images,version", [
    *((s, n, 6) for s in ("unidirection", "bidirection", "multidirection") for n in (1, 2)),
    # RWKV-7: layer 0's values (v_first) follow each layer's scan order
    ("bidirection", 2, 7), ("multidirection", 1, 7)])
def test_training_forward_equals_prefill_plus_decode(scanning, n_images, version):
    model = tiny_model(scanning, version=version)
    pixel = torch.randn(3, n_images, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    prompts = []
    for b, (pre, mid, post) in enumerate([(5, 3, 4), (11, 2, 6), (1, 7, 2)]):  # different prefix lengths
        p = ids(pre, 10 * b) + [IMAGE_TOKEN_INDEX]
        if n_images == 2:
            p += ids(mid, 10 * b + 1) + [IMAGE_TOKEN_INDEX]
        prompts.append(p + ids(post, 10 * b + 2))

    with torch.no_grad():
        # inference path, one sample at a time: layer-wise prefill then greedy recurrent decoding
        answers, step_logits = [], []
        for b, prompt in enumerate(prompts):
            logits, state = model.prefill(prompt, pixel[b])
            tokens, per_step = [], [logits]
            for _ in range(10):
                tokens.append(int(per_step[-1].argmax()))
                step, state = model.rwkv(torch.tensor([[tokens[-1]]]), state, logits="last")
                per_step.append(step[0])
            answers.append(tokens)
            step_logits.append(torch.stack(per_step[:10]))

        # training path: the whole batch, prompt + answer, in one parallel forward
        full = [p + a for p, a in zip(prompts, answers)]
        labels = [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers)]
        logits, label_tensor = model(full, list(pixel), labels)

    n_tok = model.vit.num_tokens
    for b, prompt in enumerate(prompts):
        # positions whose next-token prediction is an answer token
        first = len(prompt) + n_images * (n_tok - 1) - 1
        train = logits[b, first : first + 10]
        assert (train - step_logits[b]).abs().max().item() <= 1e-4
        assert label_tensor[b, first + 1 : first + 11].tolist() == answers[b]


def test_scanning_changes_the_result():
    pixel = torch.randn(1, 3, 42, 42)
    prompt = ids(4, 0) + [IMAGE_TOKEN_INDEX] + ids(3, 1)
    outs = [tiny_model(mode).prefill(prompt, pixel)[0] for mode in ("unidirection", "bidirection", "multidirection")]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


# 4 text tokens, the 3×3 patch grid at positions 4..12, the image's CLS vector at 13 (never moved), 3 text tokens:
# the order each of the 4 layers reads the sequence in (None: unchanged), written out from SPEC §6
_TEXT_BEFORE, _TEXT_AFTER = [0, 1, 2, 3], [13, 14, 15, 16]
_REVERSED = _TEXT_BEFORE + [12, 11, 10, 9, 8, 7, 6, 5, 4] + _TEXT_AFTER
_COLUMNS = _TEXT_BEFORE + [4, 7, 10, 5, 8, 11, 6, 9, 12] + _TEXT_AFTER
_COLUMNS_REVERSED = _TEXT_BEFORE + [12, 9, 6, 11, 8, 5, 10, 7, 4] + _TEXT_AFTER
_LAYER_ORDERS = {
    "unidirection": [None, None, None, None],
    "bidirection": [None, _REVERSED, None, _REVERSED],
    "multidirection": [None, _REVERSED, _COLUMNS, _COLUMNS_REVERSED],
}


@pytest.mark.parametrize("mode", list(_LAYER_ORDERS))
def test_each_layer_reads_the_patches_in_its_exact_order(mode, monkeypatch):
    import visualrwkv.model as model_module

    model = tiny_model(mode)
    seen = []  # (layer input permutation) per block: hidden_states permutes x, runs the block, permutes back
    real_permute = model_module.permute
    real_run_block = model.rwkv.run_block

    def recording_permute(x, index):
        recording_permute.last = None if index is None else index[0].tolist()
        return real_permute(x, index)

    def recording_run_block(block, x, *args, **kwargs):
        seen.append(recording_permute.last)
        return real_run_block(block, x, *args, **kwargs)

    monkeypatch.setattr(model_module, "permute", recording_permute)
    monkeypatch.setattr(model.rwkv, "run_block", recording_run_block)
    prompt = ids(4, 0) + [IMAGE_TOKEN_INDEX] + ids(3, 1)
    model.prefill(prompt, torch.randn(1, 3, 42, 42))
    assert seen == _LAYER_ORDERS[mode]


def test_batched_rows_do_not_depend_on_each_other():
    model = tiny_model("bidirection")
    pixel = torch.randn(2, 1, 3, 42, 42)
    prompts = [ids(3, 0) + [IMAGE_TOKEN_INDEX] + ids(5, 1), ids(9, 2) + [IMAGE_TOKEN_INDEX] + ids(2, 3)]
    with torch.no_grad():
        both, _ = model(prompts, list(pixel))
        alone, _ = model(prompts[1:], list(pixel[1:]))
    n = alone.shape[1]
    assert (both[1, :n] - alone[0]).abs().max().item() <= 1e-5


def test_splice_truncation_keeps_labels_and_whole_images():
    model = tiny_model("bidirection")
    n_tok = model.vit.num_tokens  # 10: the image occupies positions [4, 14)
    embeds = [torch.zeros(1, n_tok, 128)]
    prompt = ids(4, 0) + [IMAGE_TOKEN_INDEX] + ids(20, 1)
    # labels in the head: the window [0, 12) would cut the image, so it ends where the image starts
    labels = [7] * 4 + [IGNORE_INDEX] + [IGNORE_INDEX] * 20
    batch = model.splice([prompt], embeds, [labels], ctx_len=12)
    assert batch.lengths == [4] and batch.spans == [[]] and batch.labels[0].tolist() == [7] * 4
    assert batch.unsupervised == []
    # no label in the head: the official code would train the tail, i.e. the answers without their
    # image; here the head is kept without labels (nothing is trained) and the row is reported
    labels = [IGNORE_INDEX] * 5 + [7] * 20
    batch = model.splice([prompt], embeds, [labels], ctx_len=12)
    assert batch.lengths == [4] and batch.spans == [[]] and batch.unsupervised == [0]
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 4
    # a window that fits keeps the image and its span
    batch = model.splice([prompt], embeds, [labels], ctx_len=40)
    assert batch.lengths == [34] and batch.spans[0][0].start == 4 and batch.spans[0][0].end == 13
    with pytest.raises(ValueError, match="sample 0: 1 image placeholder"):
        model.splice([prompt], [torch.zeros(2, n_tok, 128)])


def test_sample_level_loss_weights_samples_equally():
    logits = torch.zeros(2, 5, V)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9]])
    per_sample = sample_level_loss(logits, labels)
    assert torch.allclose(per_sample, torch.full((2,), torch.log(torch.tensor(float(V)))))
