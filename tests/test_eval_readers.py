"""Benchmark readers: every fixture reads back in its layout; malformed files fail with file + line + problem."""

import base64
import json
import shutil
from pathlib import Path

import pytest

from visualrwkv.eval.benchmarks import TASK_NAMES, build_fixture, read_items
from visualrwkv.eval.items import EvalDataError
from visualrwkv.eval.tasks import mmbench, mme, pope, scienceqa, seed, textvqa, vqav2

N = 3


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_fixtures")
    for task in TASK_NAMES:
        build_fixture(task, root / task, n=N, seed=1)
    return root


@pytest.fixture
def copy_of(fixtures, tmp_path):
    """A private copy of a task's fixture, for tests that break files."""

    def make(task: str) -> Path:
        return Path(shutil.copytree(fixtures / task, tmp_path / task))

    return make


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_reader_reads_its_fixture(fixtures, task):
    items = read_items(task, fixtures / task)
    assert items
    assert len({item.key for item in items}) == len(items)
    assert [i.key for i in read_items(task, fixtures / task)] == [i.key for i in items]  # stable order
    for item in items:
        if item.image is None:
            assert "<image>" not in item.text
        else:
            assert item.text.startswith("<image>\n")
            assert isinstance(item.image, bytes) or Path(item.image).is_file()


def test_vqav2_prompts_and_splits(fixtures):
    val = read_items("vqav2", fixtures / "vqav2", split="val")
    assert len(val) == N
    assert val[0].text.endswith("?\nAnswer the question using a single word or phrase.")
    assert len(val[0].meta["answers"]) == 10
    assert val[0].image.name == vqav2.val_image_name(100)
    testdev = read_items("vqav2", fixtures / "vqav2", split="testdev")
    assert len(testdev) == N and "answers" not in testdev[0].meta
    with pytest.raises(ValueError, match="unknown split 'test'"):
        read_items("vqav2", fixtures / "vqav2", split="test")


def test_scienceqa_keeps_test_split_and_prompt_as_is(fixtures):
    items = read_items("scienceqa", fixtures / "scienceqa")
    # N image problems + max(1, N // 2) text-only problems in test; one train problem left out
    assert len(items) == N + max(1, N // 2)
    assert sum(i.meta["has_image"] for i in items) == N
    assert all(i.text.endswith("Answer with the option's letter from the given choices directly.") for i in items)
    problems = json.loads((fixtures / "scienceqa" / "problems.json").read_text())
    assert any(p["split"] == "train" for p in problems.values())
    assert {i.question_id for i in items} == {pid for pid, p in problems.items() if p["split"] == "test"}


def test_textvqa_prompt_styles(fixtures):
    llava = read_items("textvqa", fixtures / "textvqa", prompt="llava")
    none = read_items("textvqa", fixtures / "textvqa", prompt="none")
    before = read_items("textvqa", fixtures / "textvqa", prompt="before")
    assert len(llava) == 2 * N and len({i.meta["image_id"] for i in llava}) == N  # two questions per image
    question = llava[0].meta["question"]
    ocr = llava[0].text.split("\n")[2]
    assert ocr.startswith("Reference OCR token: ")
    suffix = "Answer the question using a single word or phrase."
    assert llava[0].text == f"<image>\n{question}\n{ocr}\n{suffix}"
    assert none[0].text == f"<image>\n{question}\n{suffix}"
    assert before[0].text == f"<image>\n{ocr}\n{question}\n{suffix}"
    assert [i.key for i in llava] == [i.key for i in before]
    with pytest.raises(ValueError, match="unknown prompt style"):
        read_items("textvqa", fixtures / "textvqa", prompt="after")


def test_pope_items_carry_split_and_label(fixtures):
    items = read_items("pope", fixtures / "pope")
    assert len(items) == 3 * N
    assert {i.meta["split"] for i in items} == set(pope.POPE_SPLITS)
    assert {i.meta["label"] for i in items} == {"yes", "no"}


def test_mme_with_and_without_llava_jsonl(fixtures, copy_of):
    with_jsonl = read_items("mme", fixtures / "mme")
    assert len(with_jsonl) == 14 * N * 2
    assert with_jsonl[0].question_id.endswith("#0") and with_jsonl[1].question_id.endswith("#1")
    data = copy_of("mme")
    (data / mme.QUESTIONS).unlink()
    from_folders = read_items("mme", data)
    assert len(from_folders) == len(with_jsonl)

    def truth(items):
        return sorted((i.meta["subtask"], i.meta["image_key"], i.meta["answer"]) for i in items)

    assert truth(from_folders) == truth(with_jsonl)
    assert all(i.text.endswith("Please answer yes or no.") for i in from_folders)


def test_mmbench_rotations_share_the_index(fixtures):
    items = read_items("mmbench", fixtures / "mmbench")
    by_index = {}
    for item in items:
        by_index.setdefault(item.question_id, []).append(item)
    assert len(by_index) == N
    for rotations in by_index.values():
        n_options = len(rotations[0].meta["options"])
        assert [i.round_id for i in rotations] == list(range(n_options))
    cn = read_items("mmbench", fixtures / "mmbench", split="dev_cn")
    assert cn[0].text.endswith("\n请直接回答选项字母。")


def test_mme_llava_prompt_join_rules():
    release = ["Is it red? Please answer yes or no.", "Is it blue?  Please answer yes or no."]
    assert mme.llava_question_index("Is it red? Please answer yes or no.", release) == 0
    assert mme.llava_question_index("Is it red?\nAnswer the question using a single word or phrase.", release) == 0
    assert mme.llava_question_index("Is it blue?", release) == 1  # the release's double space, second try
    assert mme.llava_question_index("Is it green?", release) is None


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")


PNG = base64.b64encode(
    base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
).decode()


def test_mmbench_rotation_text_and_answers(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    _write_tsv(tmp_path / mmbench.FILES["dev"], header,
               [["7", "Which pet?", "nan", "cat", "dog", "fish", "nan", "B", "pets", PNG]])  # fmt: skip
    items = read_items("mmbench", tmp_path)
    tail = "\nAnswer with the option's letter from the given choices directly."
    assert [i.text for i in items] == [
        "<image>\nWhich pet?\nA. cat\nB. dog\nC. fish" + tail,
        "<image>\nWhich pet?\nA. dog\nB. fish\nC. cat" + tail,
        "<image>\nWhich pet?\nA. fish\nB. cat\nC. dog" + tail,
    ]
    assert [i.meta["answer"] for i in items] == ["B", "A", "C"]
    assert [i.key for i in items] == [("7", 0), ("7", 1), ("7", 2)]


def test_mmbench_precomputed_circular_copies(tmp_path):
    header = ["index", "question", "hint", "A", "B", "answer", "image"]
    rows = [["3", "Q?", "Look.", "yes", "no", "A", PNG], ["1000003", "Q?", "Look.", "no", "yes", "B", "3"]]
    _write_tsv(tmp_path / mmbench.FILES["dev"], header, rows)
    items = read_items("mmbench", tmp_path)
    assert [i.key for i in items] == [("3", 0), ("1000003", 0)]
    assert [i.meta["group"] for i in items] == ["3", "3"]
    assert [i.meta["rotation"] for i in items] == [0, 1]
    assert items[0].text.startswith("<image>\nLook.\nQ?\nA. yes\nB. no")
    assert items[1].image == items[0].image  # the copy's image refers to its base row


# ---- malformed files ------------------------------------------------------------------------------------------


def test_missing_data_dir_names_the_layout(tmp_path):
    with pytest.raises(EvalDataError, match="not a directory.*llava_gqa_testdev_balanced.jsonl"):
        read_items("gqa", tmp_path / "nope")


def test_bad_json_line(copy_of):
    data = copy_of("gqa")
    path = data / "llava_gqa_testdev_balanced.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalDataError, match=r"llava_gqa_testdev_balanced\.jsonl:2: invalid JSON"):
        read_items("gqa", data)


def test_missing_image_file(copy_of):
    data = copy_of("pope")
    first = json.loads((data / pope.QUESTIONS).read_text().splitlines()[0])
    (data / pope.IMAGES / first["image"]).unlink()
    with pytest.raises(EvalDataError, match=r"llava_pope_test\.jsonl:1: image file .* does not exist"):
        read_items("pope", data)


def test_pope_labels_must_align(copy_of):
    data = copy_of("pope")
    path = pope.label_file(data, "popular")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(EvalDataError, match=r"coco_pope_popular\.json: 2 labels for 3 'popular' questions"):
        read_items("pope", data)
    swapped = [lines[1], lines[0]] + lines[2:]
    path.write_text("\n".join(swapped) + "\n")
    with pytest.raises(EvalDataError, match=r"coco_pope_popular\.json:1: image .* differs"):
        read_items("pope", data)


def test_vqav2_needs_ten_answers(copy_of):
    data = copy_of("vqav2")
    path = data / vqav2.VAL_ANNOTATIONS
    doc = json.loads(path.read_text())
    doc["annotations"][1]["answers"].pop()
    path.write_text(json.dumps(doc))
    with pytest.raises(EvalDataError, match=r"annotations\.json:annotations\[1\]: expected 10 answers"):
        read_items("vqav2", data)


def test_scienceqa_image_token_must_match_image(copy_of):
    data = copy_of("scienceqa")
    path = data / scienceqa.QUESTIONS
    entries = json.loads(path.read_text())
    del entries[0]["image"]
    path.write_text(json.dumps(entries))
    with pytest.raises(EvalDataError, match=r"llava_test_CQM-A\.json:\[0\]: the prompt has <image>"):
        read_items("scienceqa", data)


def test_scienceqa_image_key_adds_a_missing_image_token(copy_of):
    data = copy_of("scienceqa")
    path = data / scienceqa.QUESTIONS
    entries = json.loads(path.read_text())
    with_token = entries[0]["conversations"][0]["value"]
    entries[0]["conversations"][0]["value"] = with_token.removeprefix("<image>\n")
    path.write_text(json.dumps(entries))
    assert read_items("scienceqa", data)[0].text == with_token


def test_textvqa_unknown_question(copy_of):
    data = copy_of("textvqa")
    path = data / textvqa.QUESTIONS
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["text"] = "what is not asked?\n" + row["text"].split("\n", 1)[1]
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalDataError, match=r"llava_textvqa_val_v051_ocr\.jsonl:3: no annotation"):
        read_items("textvqa", data)


def test_mme_bad_answer_line_and_unmatched_prompt(copy_of):
    data = copy_of("mme")
    txt = data / mme.RELEASE / "count" / "0000.txt"
    good = txt.read_text()
    txt.write_text(good.replace("\t", " ", 1))
    with pytest.raises(EvalDataError, match=r"count/0000\.txt:1: expected 'question<TAB>Yes\|No'"):
        read_items("mme", data)
    txt.write_text(good)
    path = data / mme.QUESTIONS
    lines = path.read_text().splitlines()
    row = json.loads(lines[4])
    row["text"] = "Is this a different question?"
    lines[4] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalDataError, match=r"llava_mme\.jsonl:5: no question"):
        read_items("mme", data)


def test_mmbench_tsv_errors(tmp_path):
    path = tmp_path / mmbench.FILES["dev"]
    _write_tsv(path, ["index", "question", "A", "B", "answer"], [["1", "Q", "x", "y", "A"]])
    with pytest.raises(EvalDataError, match=r"mmbench_dev_20230712\.tsv:line 1: missing column 'image'"):
        read_items("mmbench", tmp_path)
    header = ["index", "question", "A", "B", "answer", "image"]
    _write_tsv(path, header, [["1", "Q", "x", "y", "A", PNG], ["2", "Q", "x", "y", "A", "not*base64"]])
    with pytest.raises(EvalDataError, match=r"tsv:row 2: column 'image' is not valid base64"):
        read_items("mmbench", tmp_path)
    _write_tsv(path, header, [["1", "Q", "x", "y", "A", PNG, "extra"]])
    with pytest.raises(EvalDataError, match=r"tsv:row 1: expected 6 tab-separated fields"):
        read_items("mmbench", tmp_path)
    _write_tsv(path, header, [["1", "Q", "x", "y", "C", PNG]])
    with pytest.raises(EvalDataError, match=r"tsv:row 1: answer 'C' is not one of the 2 options"):
        read_items("mmbench", tmp_path)
    _write_tsv(path, header, [["1", "Q", "x", "y", "A", base64.b64encode(b"text, not an image").decode()]])
    with pytest.raises(EvalDataError, match=r"tsv:row 1: column 'image' does not decode to an image"):
        read_items("mmbench", tmp_path)


def test_seed_answer_must_be_a_letter(copy_of):
    data = copy_of("seed")
    path = data / seed.ANNOTATIONS
    doc = json.loads(path.read_text())
    doc["questions"][0]["answer"] = "E"
    path.write_text(json.dumps(doc))
    with pytest.raises(EvalDataError, match=r"SEED-Bench\.json:questions\[0\]: answer 'E'"):
        read_items("seed", data)
