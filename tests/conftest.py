import os

# the `rwkv` reference package reads these at import time
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.manual_seed(0)


# ---- tiny full-vocabulary VisualRWKV for the engine, server, web UI and chat CLI tests ----------
import pytest  # noqa: E402


def _build_tiny_vlm(seed: int = 0):
    """Random weights, the real tokenizer's vocabulary (so text decodes), a small tiny-kind encoder
    (32×32 → 16 image vectors); the "\\n\\n" token is boosted so that answers usually end by
    themselves within a few tokens, as a trained model's do."""
    from visualrwkv.model import VisualRWKV, VisualRWKVConfig
    from visualrwkv.rwkv.model import RWKVConfig
    from visualrwkv.testing import random_rwkv6_state_dict
    from visualrwkv.vision.encoders import VisionConfig
    from visualrwkv.vision.tiny import TinyEncoderConfig

    torch.manual_seed(seed)
    vision = VisionConfig("tiny", tiny=TinyEncoderConfig(image_size=32, patch_size=8, hidden_size=64,
                                                         num_layers=1, num_heads=2))
    model = VisualRWKV(VisualRWKVConfig(rwkv=RWKVConfig(n_embd=128, n_layer=2, vocab_size=65536), vision=vision))
    model.rwkv.load_state_dict(random_rwkv6_state_dict(128, 2, vocab_size=65536, seed=seed))
    with torch.no_grad():
        torch.nn.init.normal_(model.proj.weight, std=0.5)
        bias = model.rwkv.ln_out.bias
        model.rwkv.head.weight[261] += 2.0 * bias / bias.norm()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_vlm():
    """A shared tiny VisualRWKV (vocab 65536, n_embd 128, 2 layers); never mutate it."""
    return _build_tiny_vlm()


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_vlm, tmp_path_factory):
    """`tiny_vlm` saved as a model directory, for `--model PATH`."""
    path = tmp_path_factory.mktemp("tiny_vlm") / "tiny-vlm"
    tiny_vlm.save_pretrained(path)
    return path


def _build_tiny_v7_vlm(seed: int = 0):
    """A v7.00-like tiny model: the v7 prompt format (images first, several per conversation), an RWKV-7
    LM with random weights, the mlp projector, unidirectional scanning, a tiny encoder (32×32 → 16
    vectors). "\\n\\n" is not boosted: greedy answers run to max_tokens, so none is empty."""
    from visualrwkv.model import VisualRWKV, VisualRWKVConfig
    from visualrwkv.rwkv.model import RWKVConfig
    from visualrwkv.testing import random_rwkv7_state_dict
    from visualrwkv.vision.encoders import VisionConfig
    from visualrwkv.vision.tiny import TinyEncoderConfig

    torch.manual_seed(seed)
    vision = VisionConfig("tiny", tiny=TinyEncoderConfig(image_size=32, patch_size=8, hidden_size=64,
                                                         num_layers=1, num_heads=2))
    config = VisualRWKVConfig(rwkv=RWKVConfig(n_embd=128, n_layer=2, vocab_size=65536, version=7), vision=vision,
                              projector="mlp", scanning="unidirection", prompt_format="v7")
    model = VisualRWKV(config)
    model.rwkv.load_state_dict(random_rwkv7_state_dict(128, 2, vocab_size=65536, seed=seed))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_v7_vlm():
    """A shared v7.00-like tiny VisualRWKV (several images per conversation); never mutate it."""
    return _build_tiny_v7_vlm()


@pytest.fixture(scope="session")
def tiny_v7_vlm_dir(tiny_v7_vlm, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_v7_vlm") / "tiny-v7-vlm"
    tiny_v7_vlm.save_pretrained(path)
    return path


# ---- the shipped model and its bundled examples, for the follow-up checks --------------------------


@pytest.fixture(scope="session")
def shipped_vlm():
    """The shipped tiny model (src/visualrwkv/assets/tiny); never mutate it."""
    from visualrwkv.model import VisualRWKV

    return VisualRWKV.from_pretrained("tiny").eval()


@pytest.fixture(scope="session")
def example_conversations():
    """The bundled example questions as one conversation per image: [(image path, [example, ...])],
    each image's questions in the order questions.json lists them (the second and third are follow-ups)."""
    from visualrwkv.demo import EXAMPLES_DIR, load_examples

    by_image: dict = {}
    for example in load_examples():
        by_image.setdefault(example["image"], []).append(example)
    assert all(len(questions) >= 2 for questions in by_image.values()), "each image needs follow-ups"
    return [(EXAMPLES_DIR / image, questions) for image, questions in by_image.items()]


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """The compiled CPU kernels are built for this session (and its subprocesses), not into ~/.cache."""
    os.environ["VISUALRWKV_CACHE"] = str(tmp_path_factory.mktemp("visualrwkv-cache"))
    yield
