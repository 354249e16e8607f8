"""What a model name points at: a local path, a model shipped with the package ("tiny"), or a
Hugging Face Hub id — and the model card and upload that make a model directory a Hub repository.

Hub ids are `org/name`, with an optional revision and file, written as huggingface_hub's own
`hf://` paths are: `org/name@revision/path/in/repo.pth` (the `hf://` prefix is optional; a revision
holding "/" is URL-quoted, `refs%2Fpr%2F1`). They resolve through huggingface_hub's cache: nothing
is downloaded unless the caller asks (`download=True`, `--download`) and the Hub is reachable.

Free of torch imports, so that the CLI's `--help` stays instant.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from visualrwkv.utils import why_missing

SHIPPED_MODELS = {"tiny": Path(__file__).resolve().parent / "assets" / "tiny"}
TINY_MODEL = SHIPPED_MODELS["tiny"]  # the shipped tiny model's directory (also `visualrwkv.TINY_MODEL`)
MODEL_ENV = "VISUALRWKV_MODEL"  # the default model of every command, when set
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
CARD_MARK = "<!-- model card written by visualrwkv -->"

# org and name as the Hub allows them (letters, digits, "-", "_", "."; no leading punctuation)
_HUB_ID = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^/]+))?"
                     r"(?:/(?P<filename>.+))?$")


@dataclass(frozen=True)
class HubId:
    repo_id: str
    revision: str | None = None
    filename: str | None = None  # one checkpoint file in the repo; None: the repo is a model directory

    def __str__(self) -> str:
        revision = quote(self.revision, safe="") if self.revision else None
        return self.repo_id + (f"@{revision}" if revision else "") + (f"/{self.filename}" if self.filename else "")


def parse_hub_id(text: str) -> HubId | None:
    """`org/name[@revision][/file]` (optionally `hf://`-prefixed) → HubId; None if it is not one."""
    match = _HUB_ID.match(text)
    if not match or ".." in match["repo"] or (match["filename"] and ".." in match["filename"].split("/")):
        return None
    revision = unquote(match["revision"]) if match["revision"] else None
    return HubId(match["repo"], revision, match["filename"])


def default_model() -> str:
    """The model a command uses without --model: $VISUALRWKV_MODEL, else the shipped tiny model."""
    return os.environ.get(MODEL_ENV) or "tiny"


# folder names a training run gives its results, which say nothing about the model
_GENERIC_NAMES = {"final", "model", "models", "checkpoint", "snapshot", "snapshots", "weights", ""}


def readable_name(name: str | os.PathLike) -> str:
    """A name for a model that a person recognises, as a server reports it (vLLM's default served
    name): "visualrwkv-tiny"; a Hub id as written, without the revision; a file's stem; a folder's
    name, or its parent's where the folder is a run's "final" (runs/finetune/final → "finetune")."""
    text = os.fspath(name)
    if text in SHIPPED_MODELS:
        return f"visualrwkv-{text}"
    local = Path(text).expanduser()
    if not local.exists() and (hub := parse_hub_id(text)) is not None:
        return hub.repo_id + (f"/{hub.filename.rsplit('/', 1)[-1].removesuffix('.pth')}" if hub.filename else "")
    local = local.resolve()
    if local == SHIPPED_MODELS["tiny"]:
        return "visualrwkv-tiny"
    if local.is_file():
        return local.stem.removesuffix("_rwkv").removesuffix("_visual") or "visualrwkv"
    for part in (local, *local.parents):
        if part.name.lower() not in _GENERIC_NAMES and not part.name.startswith("step-"):
            return part.name
    return "visualrwkv"


def hub_cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment now (HF_HUB_CACHE, HF_HOME) as it does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def resolve_model(name: str | os.PathLike, *, revision: str | None = None, filename: str | None = None,
                  download: bool = False) -> Path:
    """The local path of the model `name` names: an existing file or folder (which wins, as in
    transformers), a shipped model's name ("tiny"), or a Hub id found in (or, with `download`,
    fetched into) the huggingface_hub cache. A name that is none of these is a one-line error."""
    text = os.fspath(name)
    local = Path(text).expanduser()
    if local.exists() and revision is None and filename is None:
        return local
    if text in SHIPPED_MODELS and revision is None and filename is None:
        return SHIPPED_MODELS[text]
    if os.path.lexists(local):  # there, but not readable: a broken symlink, a loop
        raise FileNotFoundError(f"model path {text!r} {why_missing(local)}")
    hub = None if text.startswith(("/", "./", "../", "~", "\\")) else parse_hub_id(text)
    if hub is None:
        raise FileNotFoundError(f"model {text!r} does not exist: not a file or folder, nor a shipped model "
                                f"({', '.join(SHIPPED_MODELS)}), nor a Hub id (org/name[@revision][/file])")
    if revision and hub.revision and revision != hub.revision:
        raise ValueError(f"{text!r} names revision {hub.revision!r} but revision={revision!r} was given")
    if filename and hub.filename and filename != hub.filename:
        raise ValueError(f"{text!r} names file {hub.filename!r} but filename={filename!r} was given")
    return fetch_from_hub(HubId(hub.repo_id, revision or hub.revision, filename or hub.filename), download=download)


def _files_of(hub: HubId) -> list[str]:
    """The repo files a model needs: config + weights, or the named checkpoint (with its pair's other half)."""
    if hub.filename is None:
        return [CONFIG_NAME, WEIGHTS_NAME]
    for mine, other in (("_rwkv.pth", "_visual.pth"), ("_visual.pth", "_rwkv.pth")):
        if hub.filename.endswith(mine):  # an exported pair is read together
            return [hub.filename, hub.filename[: -len(mine)] + other]
    return [hub.filename]


def fetch_from_hub(hub: HubId, *, download: bool = False) -> Path:
    """The cached path of `hub` (its snapshot folder, or the named file), fetched first if `download`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache = hub_cache_dir()
    how = f"`--download` (Python: download=True), or `hf download {hub.repo_id}`"
    paths = []
    for file in _files_of(hub):
        try:
            if not download:
                paths.append(hf_hub_download(hub.repo_id, file, revision=hub.revision, cache_dir=cache,
                                             local_files_only=True))
                continue
            if _offline():
                raise FileNotFoundError(f"{hub} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE "
                                        "forbids downloading it")
            paths.append(hf_hub_download(hub.repo_id, file, revision=hub.revision, cache_dir=cache,
                                         library_name="visualrwkv"))
        except LocalEntryNotFoundError:
            if download:  # asked for, but the Hub could not be reached
                raise FileNotFoundError(f"{hub} is not in the Hugging Face cache ({cache}) and the Hub cannot be "
                                        "reached: connect, or copy the model into that cache") from None
            raise FileNotFoundError(f"{hub} is not in the Hugging Face cache ({cache}): fetch it with {how}") from None
        except GatedRepoError:
            raise PermissionError(f"{hub.repo_id} is gated: accept its terms on huggingface.co and log in "
                                  "(`hf auth login`)") from None
        except RepositoryNotFoundError:
            raise FileNotFoundError(f"no Hub repository {hub.repo_id!r} (or it is private: log in with "
                                    "`hf auth login`)") from None
        except RevisionNotFoundError:
            raise FileNotFoundError(f"{hub.repo_id} has no revision {hub.revision!r}") from None
        except EntryNotFoundError:
            hint = "" if hub.filename else (f": name its checkpoint file, e.g. {hub.repo_id}/FILE.pth "
                                            "(an official VisualRWKV release)")
            raise FileNotFoundError(f"{hub.repo_id} has no file {file!r}{hint}") from None
    return Path(paths[0]) if hub.filename else Path(paths[0]).parent


# ---- the model card and the upload -----------------------------------------------------------------

def model_card(config: dict, repo_id: str | None = None) -> str:
    """A Hub model card (README.md) for a saved model: metadata, what it is, how to use it."""
    rwkv, vision = config["rwkv"], config["vision"]
    name = repo_id or "path/to/this/folder"
    return f"""---
library_name: visualrwkv
pipeline_tag: image-text-to-text
tags:
- visualrwkv
- rwkv
- vision-language
---
{CARD_MARK}
# {repo_id or 'VisualRWKV'}

A [VisualRWKV](https://github.com/howard-hou/VisualRWKV) vision-language model (Hou et al., COLING 2025),
saved by the `visualrwkv` Python package: `config.json` + `model.safetensors`.

| | |
|---|---|
| language model | RWKV-6, {rwkv['n_layer']} layers, width {rwkv['n_embd']}, vocabulary {rwkv['vocab_size']} |
| vision encoder | {vision['kind']} |
| projector | {config['projector']} |
| scanning | {config['scanning']} |
| prompt | image {config['image_position']} (middle: the question before and after the image) |
| context | {config['ctx_len']} tokens |

## Use

```bash
pip install visualrwkv
visualrwkv ask --model {name} --image photo.jpg "What is in the picture?"
visualrwkv serve --model {name}        # OpenAI-compatible API
```

```python
from visualrwkv import VisualRWKV
model = VisualRWKV.from_pretrained("{name}")
print(model.chat("photo.jpg", "What is in the picture?"))
```
"""


def write_model_card(directory: Path, config: dict, repo_id: str | None = None) -> None:
    """README.md in `directory`, unless one is there that visualrwkv did not write (a card of your own stays)."""
    from .utils import atomic_write

    path = Path(directory) / CARD_NAME
    if path.is_file() and CARD_MARK not in path.read_text(encoding="utf-8", errors="replace"):
        return
    with atomic_write(path, "w") as f:
        f.write(model_card(config, repo_id))


def upload_folder(folder: Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                  commit_message: str = "Upload VisualRWKV model", token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="visualrwkv")
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
