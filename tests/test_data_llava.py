"""LLaVA dataset reading/validation, rounds split, truncation, collate, and the epoch sampler (§8.3–8.4)."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visualrwkv.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from visualrwkv.data.llava import DataError, LlavaDataset, collate, split_rounds, truncate_ids
from visualrwkv.data.sampler import EpochSampler
from visualrwkv.prompts import SHORT_ANSWER_PHRASE, tokenize_conversation
from visualrwkv.rwkv.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A stand-in for the vision layer's preprocess (module level, so workers can pickle it)."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


def qa(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name, color in [("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))]:
        Image.new("RGB", (4, 3), color).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return tmp_path


GOOD_ROWS = [
    {"id": "a", "image": "red.png", "conversations": qa("<image>\nWhat colour?", "Red")},
    {"sample_id": 7, "image": ["red.png", "blue.png"], "conversations": qa("<image>\n<image>\nCompare.", "Different")},
    {"id": "t", "conversations": qa("Say hi", "Hi")},
]


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------- reading


def test_json_and_jsonl_give_the_same_samples(root, tok):
    a = LlavaDataset(write_json(root / "d.json", GOOD_ROWS), root, tokenizer=tok, preprocess=to_tensor)
    b = LlavaDataset(write_jsonl(root / "d.jsonl", GOOD_ROWS), root, tokenizer=tok, preprocess=to_tensor)
    assert len(a) == len(b) == 3
    assert [r.sample_id for r in a.records] == ["a", "7", "t"]
    assert a.records[0].location.endswith("d.json[0]") and b.records[2].location.endswith("d.jsonl:3")
    for i in range(3):
        x, y = a[i], b[i]
        assert x["id"] == y["id"] and torch.equal(x["input_ids"], y["input_ids"])
        assert torch.equal(x["labels"], y["labels"])
    item = a[1]
    assert [img.shape for img in item["images"]] == [(3, 3, 4), (3, 3, 4)]
    assert item["images"][0][0].mean() == 1 and item["images"][1][2].mean() == 1  # red then blue, in order
    assert a[2]["images"] == [] and a.skipped == Counter()


def test_item_matches_the_prompt_builder(root, tok):
    ds = LlavaDataset(write_json(root / "d.json", GOOD_ROWS), root, tokenizer=tok, image_position="first")
    item = ds[0]
    expected = tokenize_conversation(GOOD_ROWS[0]["conversations"], tok, "first", num_images=1)
    assert item["input_ids"].tolist() == expected.input_ids
    assert item["labels"].tolist() == expected.labels
    assert item["input_ids"].dtype == torch.long and (item["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1
    assert isinstance(item["images"][0], Image.Image) and item["images"][0].mode == "RGB"  # no preprocess
    assert item["id"] == "a" and item["skipped"] == []


def test_image_root_defaults_to_the_data_file_directory(root, tok):
    assert len(LlavaDataset(write_json(root / "d.json", GOOD_ROWS[:1]), tokenizer=tok)[0]["images"]) == 1


def test_invalid_json_list_is_fatal(root):
    (root / "bad.json").write_text('[{"id": 1},')
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        LlavaDataset(root / "bad.json", root, skip_bad_rows=True)


# ---------------------------------------------------------------- bad rows

BAD_ROWS = [
    ("malformed", r"\[1\] \(id None\): malformed: expected an object", "just a string"),
    ("malformed", r"\(id None\): malformed: missing 'id'", {"conversations": qa("hi", "yo")}),
    ("malformed", r"\(id 'm'\): malformed: 'conversations' must be a list", {"id": "m"}),
    ("malformed", r"malformed: turn 1: 'value' must be a string", {"id": "v", "conversations": [qa("a", "b")[0], {"from": "gpt", "value": 5}]}),
    ("malformed", r"malformed: 'image' must be a relative path", {"id": "i", "image": 3, "conversations": qa("a", "b")}),
    ("malformed", r"malformed: turn 1: empty gpt value", {"id": "e", "conversations": qa("question", "  ")}),
    ("malformed", r"malformed: no gpt turn", {"id": "n", "conversations": qa("q", "a")[:1]}),
    ("malformed", r"malformed: turn 0: <image> in a gpt turn", {"id": "g", "image": "red.png", "conversations": [{"from": "gpt", "value": "<image>"}]}),
    ("bad_role", r"\(id 'r'\): bad_role: turn 1: unknown role 'system'", {"id": "r", "conversations": [qa("a", "b")[0], {"from": "system", "value": "x"}]}),
    ("empty_conversations", r"\(id 'z'\): empty_conversations", {"id": "z", "conversations": []}),
    ("image_count_mismatch", r"\(id 'c'\): image_count_mismatch: 2 <image> tag\(s\) but 1 image\(s\)", {"id": "c", "image": "red.png", "conversations": qa("<image><image>", "x")}),
    ("image_count_mismatch", r"0 <image> tag\(s\) but 1 image\(s\)", {"id": "c0", "image": "red.png", "conversations": qa("No tag", "x")}),
    ("image_count_mismatch", r"1 <image> tag\(s\) but 0 image\(s\)", {"id": "c1", "conversations": qa("<image>\nWhere?", "x")}),
    ("missing_image", r"\(id 'mi'\): missing_image: image file not found: .*nope\.png", {"id": "mi", "image": "nope.png", "conversations": qa("<image>", "x")}),
]


@pytest.mark.parametrize("reason, message, row", BAD_ROWS)
def test_bad_row_raises_with_location_or_is_counted(root, tok, reason, message, row):
    path = write_json(root / "d.json", [GOOD_ROWS[0], row])
    with pytest.raises(DataError, match=message) as info:
        LlavaDataset(path, root, tokenizer=tok)
    assert info.value.reason == reason and info.value.location.endswith("d.json[1]")
    with pytest.warns(UserWarning, match=f"{reason}=1"):
        ds = LlavaDataset(path, root, tokenizer=tok, skip_bad_rows=True)
    assert len(ds) == 1 and ds.skipped == Counter({reason: 1}) and ds.rows_read == 2
    assert "skipped 1 of 2 rows" in ds.skip_report() and "d.json[1]" in ds.skip_report()


def test_unparsable_jsonl_line_names_the_line(root, tok):
    path = write_jsonl(root / "d.jsonl", [GOOD_ROWS[0], "", "{not json", GOOD_ROWS[2]])
    with pytest.raises(DataError, match=r"d\.jsonl:3 \(id None\): malformed: not a JSON object"):
        LlavaDataset(path, root, tokenizer=tok)
    with pytest.warns(UserWarning):
        ds = LlavaDataset(path, root, tokenizer=tok, skip_bad_rows=True)
    assert [r.sample_id for r in ds.records] == ["a", "t"] and ds.skipped == Counter(malformed=1)


def test_corrupt_image_found_eagerly_with_verify(root, tok):
    rows = [GOOD_ROWS[0], {"id": "b", "image": "broken.png", "conversations": qa("<image>", "x")}]
    path = write_json(root / "d.json", rows)
    with pytest.raises(DataError, match=r"d\.json\[1\] \(id 'b'\): corrupt_image: .*broken\.png"):
        LlavaDataset(path, root, tokenizer=tok, verify_images=True)
    with pytest.warns(UserWarning):
        ds = LlavaDataset(path, root, tokenizer=tok, verify_images=True, skip_bad_rows=True)
    assert len(ds) == 1 and ds.skipped == Counter(corrupt_image=1)


def test_corrupt_image_at_getitem_errors_or_is_replaced_and_counted(root, tok):
    rows = [{"id": "b", "image": "broken.png", "conversations": qa("<image>", "x")}, *GOOD_ROWS]
    path = write_json(root / "d.json", rows)
    strict = LlavaDataset(path, root, tokenizer=tok)  # lazy: the file exists, so building succeeds
    with pytest.raises(DataError, match=r"\(id 'b'\): corrupt_image"):
        strict[0]
    lenient = LlavaDataset(path, root, tokenizer=tok, skip_bad_rows=True)
    with pytest.warns(UserWarning, match="skipping bad sample"):
        item = lenient[0]
    assert item["id"] == "a" and len(item["skipped"]) == 1 and "corrupt_image" in item["skipped"][0]
    assert lenient.skipped == Counter(corrupt_image=1)
    assert lenient[0]["skipped"] == []  # remembered: not decoded, warned or counted twice
    assert collate([item, lenient[3]])["skipped"] == item["skipped"]


def test_image_deleted_after_building_is_a_missing_image(root, tok):
    ds = LlavaDataset(write_json(root / "d.json", GOOD_ROWS), root, tokenizer=tok)
    (root / "blue.png").unlink()
    with pytest.raises(DataError, match=r"d\.json\[1\] \(id '7'\): missing_image: .*blue\.png"):
        ds[1]


# ---------------------------------------------------------------- rounds split


def test_rounds_split(root, tok):
    conv = qa(f"<image>\nQ0?\n{SHORT_ANSWER_PHRASE}", "A0") + qa("Q1?", "") + qa("Q2?", "A2") + qa("Q3?", "A3") + qa("Q4?", "A4")
    rows = [{"id": "r", "image": "red.png", "conversations": conv}, {"id": "t", "conversations": qa("x", "y") * 3}]
    ds = LlavaDataset(write_json(root / "d.json", rows), root, tokenizer=tok, max_rounds=2)
    assert [r.sample_id for r in ds.records] == ["r#0", "r#1", "t#0", "t#1"]
    first, second = ds.records[0].conversations, ds.records[1].conversations
    assert [t["value"] for t in first] == [conv[0]["value"], "A0", "Q2?", "A2"]  # empty-answer round dropped
    assert second[0]["value"] == f"<image>\nQ3?\n{SHORT_ANSWER_PHRASE}" and len(second) == 4
    assert ds.records[1].image_paths == ds.records[0].image_paths
    assert ds.records[2].conversations[0]["value"] == "x"  # text-only rows get no tag
    for i in range(len(ds)):
        assert (ds[i]["input_ids"] == IMAGE_TOKEN_INDEX).sum() == len(ds[i]["images"])
    unsplit = LlavaDataset(write_json(root / "d.json", rows), root, tokenizer=tok, max_rounds=20)
    assert [r.sample_id for r in unsplit.records] == ["r", "t"] and len(unsplit.records[0].turns) == 8


def test_rounds_split_moves_tags_when_their_round_was_dropped(root):
    from visualrwkv.data.llava import LlavaRecord

    record = LlavaRecord("x", "f[0]", ("a.png",), (("human", "Q0\n<image>"), ("gpt", ""), ("human", "Q1"), ("gpt", "A1")))
    (chunk,) = split_rounds(record, 5)
    assert chunk.turns == (("human", "<image>\nQ1"), ("gpt", "A1"))


def test_rounds_split_needs_alternating_turns(root, tok):
    rows = [{"id": "h", "conversations": [qa("a", "b")[0], qa("c", "d")[0], qa("e", "f")[1]]}]
    with pytest.raises(DataError, match=r"\(id 'h'\): malformed: max_rounds needs alternating"):
        LlavaDataset(write_json(root / "d.json", rows), root, tokenizer=tok, max_rounds=3)
    rows = [{"id": "e", "conversations": qa("a", "") + qa("b", " ")}]
    with pytest.raises(DataError, match=r"empty_conversations: every round has an empty answer"):
        LlavaDataset(write_json(root / "d.json", rows), root, tokenizer=tok, max_rounds=3)


# ---------------------------------------------------------------- truncation and collate


def test_truncate_keeps_the_first_positions_and_whole_images():
    ids, labels = [1, 2, IMAGE_TOKEN_INDEX, 3, 4], [-100, -100, -100, 3, 4]
    assert truncate_ids(ids, labels, 4) == ([1, 2, IMAGE_TOKEN_INDEX, 3], [-100, -100, -100, 3])
    assert truncate_ids(ids, labels, 100) == (ids, labels)
    assert truncate_ids(ids, labels, 12, tokens_per_image=10) == ([1, 2, IMAGE_TOKEN_INDEX], [-100] * 3)
    assert truncate_ids(ids, labels, 11, tokens_per_image=10) == ([1, 2], [-100, -100])  # no half image


def test_dataset_ctx_len_truncates_and_drops_cut_images(root, tok):
    # two images in two rounds: the first answer lies before the second image
    row = {"id": "two", "image": ["red.png", "blue.png"],
           "conversations": qa("<image>\nWhat colour?", "Red") + qa("<image>\nAnd this one?", "Blue")}
    path = write_json(root / "d.json", [row])
    sample = tokenize_conversation(row["conversations"], tok, "first", num_images=2)
    ids = sample.input_ids
    second = [k for k, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX][1]
    for ctx_len, images in [(second + 1, 2), (second, 1), (len(ids), 2)]:
        item = LlavaDataset(path, root, tokenizer=tok, ctx_len=ctx_len, image_position="first")[0]
        assert item["input_ids"].tolist() == ids[:ctx_len] and item["labels"].tolist() == sample.labels[:ctx_len]
        assert len(item["images"]) == images
    # a sentinel spliced to 3 positions: the second image no longer fits in second + 1 + 2 positions
    item = LlavaDataset(path, root, tokenizer=tok, ctx_len=second + 2, tokens_per_image=3, image_position="first")[0]
    assert item["input_ids"].tolist() == ids[:second] and len(item["images"]) == 1


def test_a_sample_without_a_label_in_ctx_len_is_skipped_and_counted(root, tok):
    """The official code would train the last ctx_len positions: the answer without its image."""
    rows = [{"id": "long", "image": "red.png", "conversations": qa("<image>\n" + "very " * 40 + "long?", "Red")},
            {"id": "short", "image": "red.png", "conversations": qa("<image>\nColour?", "Red")}]
    path = write_json(root / "d.json", rows)
    short = tokenize_conversation(rows[1]["conversations"], tok, "middle", num_images=1)
    ctx_len = len(short.input_ids) - 1 + 10  # the short sample fits with its image spliced to 10 positions
    ds = LlavaDataset(path, root, tokenizer=tok, ctx_len=ctx_len, tokens_per_image=10)  # no skip_bad_rows
    with pytest.warns(UserWarning, match=r"no_label_in_ctx_len: no answer token within the first"):
        item = ds[0]
    assert item["id"] == "short" and len(item["skipped"]) == 1 and "(id 'long')" in item["skipped"][0]
    assert ds.skipped == {"no_label_in_ctx_len": 1}
    assert "no_label_in_ctx_len=1" in ds.skip_report()
    assert ds[0]["id"] == "short" and ds.skipped == {"no_label_in_ctx_len": 1}  # remembered, counted once
    alone = LlavaDataset(write_json(root / "e.json", rows[:1]), root, tokenizer=tok, ctx_len=ctx_len, tokens_per_image=10)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no sample could be loaded"):
        alone[0]


def test_text_only_samples_count_the_image_slot(root, tok):
    rows = [{"id": "t", "conversations": qa("Say hi", "Hi")}]
    path = write_json(root / "d.json", rows)
    sample = tokenize_conversation(rows[0]["conversations"], tok, "middle")
    n = len(sample.input_ids)
    plain = LlavaDataset(path, root, tokenizer=tok, ctx_len=n)
    assert plain[0]["input_ids"].tolist() == sample.input_ids
    slot = LlavaDataset(path, root, tokenizer=tok, ctx_len=n + 10, text_only_positions=10)
    assert slot[0]["input_ids"].tolist() == sample.input_ids
    assert slot.approx_lengths()[0] == plain.approx_lengths()[0] + 10
    cut = LlavaDataset(path, root, tokenizer=tok, ctx_len=n + 9, text_only_positions=10)
    assert cut[0]["input_ids"].tolist() == sample.input_ids[:-1]  # the slot takes 10 of the positions


def test_collate_pads(root, tok):
    ds = LlavaDataset(write_json(root / "d.json", GOOD_ROWS), root, tokenizer=tok, preprocess=to_tensor)
    items = [ds[0], ds[2], ds[1]]
    batch = collate(items)
    n = [len(i["input_ids"]) for i in items]
    assert batch["input_ids"].shape == (3, max(n)) and batch["lengths"].tolist() == n
    for row, item in enumerate(items):
        assert torch.equal(batch["input_ids"][row, : n[row]], item["input_ids"])
        assert (batch["input_ids"][row, n[row] :] == 0).all() and (batch["labels"][row, n[row] :] == IGNORE_INDEX).all()
    assert [len(x) for x in batch["images"]] == [1, 0, 2] and batch["ids"] == ["a", "t", "7"]
    with pytest.raises(ValueError):
        collate([])


def test_pickles_for_workers_and_errors_keep_their_fields(root, tok):
    ds = LlavaDataset(write_json(root / "d.json", GOOD_ROWS), root, tokenizer=tok, preprocess=to_tensor)
    copy = pickle.loads(pickle.dumps(ds))  # the Rust tokenizer is dropped and rebuilt
    assert torch.equal(copy[1]["input_ids"], ds[1]["input_ids"]) and len(copy[1]["images"]) == 2
    error = pickle.loads(pickle.dumps(DataError("missing_image", "gone", "f.json[3]", "x")))
    assert (error.reason, error.location, error.sample_id, str(error)) == (
        "missing_image", "f.json[3]", "x", "f.json[3] (id 'x'): missing_image: gone",
    )
    with pytest.raises(ValueError, match="image_position"):
        LlavaDataset(root / "d.json", root, image_position="centre")


def test_dataloader_with_two_workers(root, tok):
    rows = [{"id": f"s{i}", "image": "red.png", "conversations": qa("<image>\nQ" + "?" * i, f"A{i}")} for i in range(10)]
    ds = LlavaDataset(write_json(root / "d.json", rows), root, tokenizer=tok, preprocess=to_tensor)
    sampler = EpochSampler(len(ds), seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=2)
    ids = [i for batch in loader for i in batch["ids"]]
    assert sorted(ids) == sorted(r["id"] for r in rows)
    assert ids == [f"s{i}" for i in sampler.shard(0)]
    batch = next(iter(loader))
    assert batch["images"][0][0].shape == (3, 3, 4)


# ---------------------------------------------------------------- sampler


def visits(n, world_size, **kwargs):
    shards = [list(EpochSampler(n, rank=r, world_size=world_size, **kwargs)) for r in range(world_size)]
    return shards, Counter(i for s in shards for i in s)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 11])
@pytest.mark.parametrize("grouped", [False, True])
def test_every_sample_visited_each_epoch(n, world_size, grouped):
    kwargs = dict(seed=5, lengths=list(range(n)), batch_size=2, group_window=2) if grouped else dict(seed=5)
    shards, counts = visits(n, world_size, **kwargs)
    pad = -n % world_size
    assert set(counts) == set(range(n))
    assert sum(counts.values()) == n + pad and sum(c - 1 for c in counts.values()) == pad  # wrap-around pad only
    assert len({len(s) for s in shards}) == 1
    shards, counts = visits(n, world_size, even_shards=False, **kwargs)
    assert counts == Counter(range(n))  # exactly once without padding


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), world_size=st.integers(1, 5), batch_size=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_grouped_coverage_and_batches_sorted(n, world_size, batch_size, seed):
    lengths = np.random.default_rng(seed).integers(1, 100, n)
    shards, counts = visits(n, world_size, seed=seed, lengths=lengths, batch_size=batch_size, group_window=3, even_shards=False)
    assert counts == Counter(range(n))
    for shard in shards:
        for b in range(0, len(shard), batch_size):
            batch = lengths[shard[b : b + batch_size]]
            assert list(batch) == sorted(batch, reverse=True)  # one window slice, longest first


def test_epochs_are_seeded_permutations():
    s = EpochSampler(50, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == sorted(e1) == list(range(50)) and e0 != e1
    assert list(EpochSampler(50, seed=1)) == e0 and list(EpochSampler(50, seed=2)) != e0
    assert list(EpochSampler(50, shuffle=False)) == list(range(50))


@pytest.mark.parametrize("grouped", [False, True])
def test_resume_gives_the_remaining_order(grouped):
    kwargs = dict(seed=9, rank=1, world_size=3, lengths=list(range(40)) if grouped else None, batch_size=4)
    first = EpochSampler(40, **kwargs)
    first.set_epoch(2)
    full = list(first)
    it = iter(first)
    for _ in range(6):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 2 and state["position"] == 6
    resumed = EpochSampler(40, **kwargs)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip
    resumed.set_epoch(2)  # the usual loop keeps the loaded position for the same epoch
    assert len(resumed) == len(full) - 6 and list(resumed) == full[6:]
    assert resumed.state_dict(consumed=4)["position"] == 10
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(full)


def test_resume_checks_the_configuration():
    state = EpochSampler(40, seed=1).state_dict()
    with pytest.raises(ValueError, match="num_samples=40 but this sampler has 41"):
        EpochSampler(41, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="position 99"):
        EpochSampler(40, seed=1).load_state_dict({**state, "position": 99})
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, rank=2, world_size=2)
