"""Model names: local paths, the shipped "tiny", and Hub ids read from a huggingface_hub cache that the
test lays out itself, exactly as huggingface_hub does (offline: nothing is ever downloaded)."""

import shutil

import pytest
import torch

from visualrwkv import hub
from visualrwkv.hub import HubId, parse_hub_id, resolve_model
from visualrwkv.model import VisualRWKV

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def lay_out_cache(cache, repo_id, files: dict, commit=COMMIT, ref="main"):
    """models--org--name/{refs/<ref>, snapshots/<commit>/<files>}: huggingface_hub's cache layout."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, snapshot / name)
    (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return path


@pytest.mark.parametrize("text, expected", [
    ("org/name", HubId("org/name")),
    ("hf://org/name", HubId("org/name")),
    ("org/my.model-v2", HubId("org/my.model-v2")),
    ("org/name@v1.0", HubId("org/name", "v1.0")),
    ("org/name@refs%2Fpr%2F1", HubId("org/name", "refs/pr/1")),
    ("org/name/weights/model_rwkv.pth", HubId("org/name", None, "weights/model_rwkv.pth")),
    ("org/name@abc123/VisualRWKV-v060-1B6.pth", HubId("org/name", "abc123", "VisualRWKV-v060-1B6.pth")),
])
def test_hub_ids_parse(text, expected):
    assert parse_hub_id(text) == expected
    assert str(expected) == text.removeprefix("hf://")  # and back


@pytest.mark.parametrize("text", ["name", "", "/abs/path", "-org/name", "org/../x", "org/name/../../etc"])
def test_non_hub_ids_are_refused(text):
    assert parse_hub_id(text) is None


def test_local_paths_and_shipped_names_resolve_first(tmp_path, cache, monkeypatch):
    assert resolve_model("tiny") == hub.TINY_MODEL and (hub.TINY_MODEL / "config.json").is_file()
    folder = tmp_path / "org" / "name"  # a local folder wins over the Hub id it also spells
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("org/name") == folder.relative_to(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'nope' does not exist: not a file or folder, nor a shipped"):
        resolve_model("nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("./org/missing")  # a path, never taken for a Hub id


def test_hub_model_directory_resolves_from_the_cache(tiny_vlm_dir, cache):
    files = {"config.json": tiny_vlm_dir / "config.json", "model.safetensors": tiny_vlm_dir / "model.safetensors"}
    snapshot = lay_out_cache(cache, "someone/tiny-vlm", files)
    lay_out_cache(cache, "someone/tiny-vlm", files, commit=OTHER, ref="v2")
    assert resolve_model("someone/tiny-vlm") == snapshot
    assert resolve_model("someone/tiny-vlm@v2") == cache / "models--someone--tiny-vlm" / "snapshots" / OTHER
    assert resolve_model("someone/tiny-vlm", revision=COMMIT) == snapshot
    with pytest.raises(ValueError, match="names revision 'v2' but revision='v3'"):
        resolve_model("someone/tiny-vlm@v2", revision="v3")
    model = VisualRWKV.from_pretrained("hf://someone/tiny-vlm")
    reference = VisualRWKV.from_pretrained(tiny_vlm_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_hub_checkpoint_file_and_its_exported_pair(tmp_path, cache):
    for name in ("x_rwkv.pth", "x_visual.pth", "solo.pth"):
        (tmp_path / name).write_bytes(b"not read here")
    snapshot = lay_out_cache(cache, "org/release", {"ckpt/x_rwkv.pth": tmp_path / "x_rwkv.pth",
                                                   "ckpt/x_visual.pth": tmp_path / "x_visual.pth"})
    assert resolve_model("org/release/ckpt/x_rwkv.pth") == snapshot / "ckpt" / "x_rwkv.pth"
    assert resolve_model("org/release", filename="ckpt/x_rwkv.pth") == snapshot / "ckpt" / "x_rwkv.pth"
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        resolve_model("org/release/solo.pth")


def test_missing_hub_models_are_one_line_errors_naming_the_cache(cache):
    with pytest.raises(FileNotFoundError) as e:
        resolve_model("org/absent")
    assert str(cache) in str(e.value) and "--download" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE forbids downloading"):
        resolve_model("org/absent", download=True)


def test_default_model_reads_the_environment(monkeypatch):
    monkeypatch.delenv(hub.MODEL_ENV, raising=False)
    assert hub.default_model() == "tiny"
    monkeypatch.setenv(hub.MODEL_ENV, "org/name")
    assert hub.default_model() == "org/name"


def test_saved_folder_is_hub_shaped_with_a_card_that_never_overwrites_yours(tiny_vlm, tmp_path):
    tiny_vlm.save_pretrained(tmp_path / "m", repo_id="me/tiny-vlm")
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: visualrwkv\n") and 'from_pretrained("me/tiny-vlm")' in card
    assert "RWKV-6, 2 layers, width 128, vocabulary 65536" in card
    (tmp_path / "m" / "README.md").write_text("my own card")
    tiny_vlm.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "README.md").read_text() == "my own card"


def test_shipped_model_is_reachable_without_a_path():
    import visualrwkv

    assert visualrwkv.TINY_MODEL == hub.TINY_MODEL
    model = VisualRWKV.from_pretrained("tiny")
    assert model.config.rwkv.n_embd == 128
