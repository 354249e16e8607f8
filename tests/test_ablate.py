"""`visualrwkv ablate`: the smoke study, resuming, the static-decay option, the token-level loss, verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visualrwkv.ablate import runner
from visualrwkv.ablate.recipe import RECIPES, stage_configs
from visualrwkv.ablate.report import claim_verdict, study_verdict, write_report
from visualrwkv.ablate.studies import STUDIES, Claim, distinct_arms, studies_of
from visualrwkv.cli import main
from visualrwkv.data import shapes
from visualrwkv.rwkv.model import RWKV, RWKVConfig


# ---------------------------------------------------------------- the whole command, a few steps


def test_smoke_study_writes_results_tables_and_plots(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablate", "--study", "loss", "--seeds", "1", "--recipe", "smoke", "--out", str(out)]) == 0
    results = sorted((out / "results").glob("*.json"))
    assert [p.stem for p in results] == sorted(f"{a.key}-seed0" for a in STUDIES["loss"].arms)
    for path in results:
        r = json.loads(path.read_text())
        for field in ("run_id", "arm_key", "factors", "seed", "accuracy", "total", "per_type", "final_loss",
                      "loss_curve", "steps", "seconds"):
            assert field in r, field
        assert r["total"] == 6 and 0.0 <= r["accuracy"] <= 1.0
        assert set(r["per_type"]) <= set(shapes.QUESTION_TYPES) | {"find"}
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())  # only the results are kept
    report = json.loads((out / "results.json").read_text())
    (study,) = report["studies"]
    assert study["study"] == "loss" and [a["arm"] for a in study["arms"]] == ["token-level", "sample-level"]
    assert all(a["n"] == 1 and "mean" in a["overall"] for a in study["arms"])
    assert "verdict" in study and study["verdict"]["text"].startswith("loss (paper: sample-level > token-level)")
    md = (out / "results.md").read_text()
    assert "| token-level | 1 |" in md and "47.94" in md and "**Verdict.**" in md
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss (paper:" in capsys.readouterr().out


# ---------------------------------------------------------------- resuming


def _fake_result(arm, seed, accuracy=0.5):
    return {"run_id": runner.run_id(arm, seed), "arm_key": arm.key, "factors": arm.factors, "seed": seed,
            "accuracy": accuracy, "total": 10, "per_type": {"color": {"accuracy": accuracy, "correct": 5, "total": 10}},
            "final_loss": 1.0, "loss_curve": [], "steps": [1], "seconds": 0.0}


class FakeTraining(list):
    """The ids of the runs trained, in order; `kill_after` = n: the study is killed before run n + 1."""

    kill_after: int | None = None


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """run_studies with preparing and training replaced: records which runs were trained."""
    trained = FakeTraining()
    monkeypatch.setattr(runner, "prepare", lambda out, recipe: (tmp_path / "data", tmp_path / "vision"))

    def train(arm, seed, recipe, data, vision, run_dir):
        if len(trained) == trained.kill_after:
            raise KeyboardInterrupt  # the study is killed here
        trained.append(runner.run_id(arm, seed))
        return _fake_result(arm, seed)

    monkeypatch.setattr(runner, "train_and_evaluate", train)
    return trained


def test_a_run_with_a_result_is_not_trained_again(fake_training, tmp_path):
    out = tmp_path / "abl"
    studies = studies_of("position")
    arms = distinct_arms(studies)
    (out / "results").mkdir(parents=True)
    existing = runner.run_id(arms[0], 0)
    (out / "results" / f"{existing}.json").write_text(json.dumps(_fake_result(arms[0], 0, 0.9)))
    runner.check_recipe(out, "smoke")
    results = runner.run_studies(studies, 2, out, "smoke")
    assert existing not in fake_training and len(fake_training) == 2 * len(arms) - 1
    assert len(results) == 2 * len(arms)
    assert next(r for r in results if r["run_id"] == existing)["accuracy"] == 0.9  # kept as it was


def test_a_killed_study_continues_where_it_stopped(fake_training, tmp_path):
    out = tmp_path / "abl"
    studies = studies_of("all")
    total = 2 * len(distinct_arms(studies))
    fake_training.kill_after = 4
    with pytest.raises(KeyboardInterrupt):
        runner.run_studies(studies, 2, out, "smoke")
    assert len(list((out / "results").glob("*.json"))) == 4
    first = list(fake_training)
    fake_training.kill_after = None
    results = runner.run_studies(studies, 2, out, "smoke")
    assert len(results) == total and len(fake_training) == total
    assert fake_training[:4] == first and len(set(fake_training)) == total  # nothing trained twice
    # seed-major: the first runs are seed 0 of every arm
    assert all(r.endswith("seed0") for r in fake_training[: total // 2])


def test_a_resumed_study_must_use_the_same_recipe(tmp_path):
    runner.check_recipe(tmp_path, "smoke")
    with pytest.raises(ValueError, match="another --out"):
        runner.check_recipe(tmp_path, "default")


def test_shared_arms_are_one_run():
    arms = distinct_arms(studies_of("all"))
    assert len(arms) == 10  # 13 arms: the baseline shared by four studies; the loss study's two on the mixed data
    assert len({a.key for a in arms}) == 10


def test_the_loss_arms_train_on_answers_of_different_lengths(tmp_path):
    """On the one-word answers alone both reductions are the same loss (the first full run came out
    bit-identical); the loss study mixes the captions in, and only it does."""
    for study in studies_of("all"):
        for arm in study.arms:
            data = stage_configs(RECIPES["smoke"], arm.factors, 0, tmp_path, tmp_path, tmp_path)[-1].data_files
            assert data[0].endswith("stage2.json")
            assert (len(data) == 2 and data[1].endswith("stage1.json")) == (study.name == "loss"), (study.name, data)


# ---------------------------------------------------------------- static decay


def _time_mixes(static: bool):
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(n_embd=64, n_layer=2, vocab_size=100, head_size=32, static_decay=static))
    return model, model.blocks[0].att


def test_static_decay_is_the_same_for_every_input():
    _, att = _time_mixes(static=True)
    x1, x2 = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    assert torch.equal(att.log_decay(x1), att.log_decay(x2))
    assert torch.equal(att.log_decay(x1)[0, 0], -torch.exp(att.time_decay.float()).view(-1))
    names = {n for n, _ in att.named_parameters()}
    assert "time_decay" in names and not names & {"time_decay_w1", "time_decay_w2"}  # no LoRA to train
    assert not att.time_decay_w1.any() and not att.time_decay_w2.any()


def test_data_dependent_decay_differs_between_inputs():
    _, att = _time_mixes(static=False)
    with torch.no_grad():  # as after training (the init's w1 is zero, so the LoRA starts at nothing)
        att.time_decay_w1.normal_(0, 0.5)
    x1, x2 = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    assert not torch.allclose(att.log_decay(x1), att.log_decay(x2))


def test_static_decay_model_matches_rwkv6_with_a_zero_lora_and_decodes_like_its_prefill():
    static, _ = _time_mixes(static=True)
    plain, _ = _time_mixes(static=False)
    # the same draws: every tensor but the decay LoRA is identical at init
    sd = static.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in plain.state_dict().items() if "time_decay_w" not in k)
    with torch.no_grad():
        for block in plain.blocks:
            block.att.time_decay_w1.zero_()
            block.att.time_decay_w2.zero_()
    ids = torch.randint(1, 100, (1, 7))
    full, _ = static(ids)
    torch.testing.assert_close(full, plain(ids)[0], rtol=0, atol=1e-5)
    state, steps = None, []
    for t in range(ids.shape[1]):
        logits, state = static(ids[:, t:t + 1], state, logits="last")
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-4)
    reloaded = RWKVConfig.from_dict(json.loads(json.dumps(static.config.to_dict())))
    assert reloaded.static_decay is True


def test_static_decay_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="RWKV-6 option"):
        RWKVConfig(n_embd=64, n_layer=1, head_size=32, version=7, static_decay=True)
    with pytest.raises(ValueError, match="true or false"):
        RWKVConfig(n_embd=64, n_layer=1, head_size=32, static_decay=1)


# ---------------------------------------------------------------- token-level loss


def test_token_level_loss_weights_every_answer_token_alike(tiny_vlm):
    from visualrwkv.train.trainer import TrainingStep

    model = tiny_vlm
    ids = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 8]]
    labels = [[-100, -100, 7, 8, 9, 10], [-100, -100, -100, 8]]  # 4 targets and 1 target
    pixels = [torch.zeros(0, *model.vit.pixel_shape)] * 2
    sample = TrainingStep(model, l2wrap=False, reduction="sample")(ids, pixels, labels, ctx_len=64)
    token = TrainingStep(model, l2wrap=False, reduction="token")(ids, pixels, labels, ctx_len=64)
    torch.testing.assert_close(token, sample * torch.tensor([4.0, 1.0]))  # sums, not means
    assert not torch.allclose(token.sum() / 5, sample.mean())  # the two means weight rows differently


def test_loss_reduction_is_validated():
    from visualrwkv.train.config import TrainConfig

    with pytest.raises(ValueError, match="loss_reduction"):
        TrainConfig(data="x.json", loss_reduction="batch")


# ---------------------------------------------------------------- verdicts


def _stats(*accuracies):
    values = list(accuracies)
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"n": len(values), "overall": {"mean": mean, "std": std},
            "by_seed": {s: v for s, v in enumerate(values)}}


def test_a_difference_beyond_the_spread_holds():
    v = claim_verdict(Claim("a", "b"), _stats(60, 61, 62), _stats(50, 51, 52))
    assert v["status"] == "holds" and v["diff"] == pytest.approx(10) and v["wins"] == 3
    assert "+10.0 points, more than the seed spread of 1.0" in v["text"]


def test_a_difference_within_the_spread_is_said_so():
    v = claim_verdict(Claim("a", "b"), _stats(50, 60, 55), _stats(52, 54, 50))
    assert v["status"] == "holds, within the seed spread"


def test_a_reversal_beyond_the_spread_is_reported_as_reversed():
    v = claim_verdict(Claim("a", "b"), _stats(40, 41, 42), _stats(50, 51, 52))
    assert v["status"] == "reversed" and v["relation"] == "<" and v["wins"] == 0
    mild = claim_verdict(Claim("a", "b"), _stats(50, 52, 54), _stats(51, 53, 55))
    assert mild["status"] == "does not hold"


def test_an_equality_claim_holds_within_the_spread():
    assert claim_verdict(Claim("a", "b", equal=True), _stats(50, 52, 54), _stats(51, 53, 55))["status"] == "holds"
    assert claim_verdict(Claim("a", "b", equal=True), _stats(60, 61, 62), _stats(50, 51, 52))["status"] \
        == "does not hold"


def test_one_seed_has_no_spread():
    v = claim_verdict(Claim("a", "b"), _stats(60), _stats(50))
    assert v["status"] == "holds on one seed" and "no spread: one seed" in v["text"]
    assert claim_verdict(Claim("a", "b"), _stats(40), _stats(50))["status"] == "does not hold on one seed"
    line = study_verdict(STUDIES["loss"], {"sample-level": _stats(60), "token-level": _stats(50)})["text"]
    assert "on one seed (no spread to judge by), 1 of 1 steps of the paper's ordering hold here" in line


def test_study_verdict_lines():
    study = STUDIES["position"]
    holds = study_verdict(study, {"sandwich": _stats(70, 71, 72), "first": _stats(60, 61, 62),
                                  "last": _stats(50, 51, 52)})
    assert "ordering holds here, beyond the seed spread" in holds["text"]
    partial = study_verdict(study, {"sandwich": _stats(70, 71, 72), "first": _stats(60, 61, 62),
                                    "last": _stats(65, 66, 67)})
    assert "reversed" in partial["status"]
    missing = study_verdict(study, {"sandwich": _stats(70), "first": None, "last": None})
    assert missing["status"] == "not all arms have run yet"
    near_chance = study_verdict(study, {"sandwich": _stats(31), "first": _stats(30), "last": _stats(29)}, chance=30.0)
    assert "majority-answer baseline" in near_chance["text"]


def test_report_from_partial_results(tmp_path):
    """A study stopped early still gets its tables and plots, the missing arms marked."""
    arm = STUDIES["position"].arm("sandwich")
    write_report(studies_of("position"), [_fake_result(arm, 0, 0.4)], tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| first | 0 | not run |" in md and "| sandwich | 1 | **40.0** |" in md
    assert (tmp_path / "position.png").is_file()


# ---------------------------------------------------------------- the harder data


def test_harder_scenes_hold_more_objects_and_find_questions_are_right():
    rng = np.random.default_rng(3)
    counts, asked = set(), 0
    for _ in range(200):
        scene = shapes.random_scene(rng, min_shapes=2, max_shapes=6, shape_scale=0.75)
        counts.add(len(scene.shapes))
        qa = shapes.ask_find(scene, rng, True)
        if qa is None:
            continue
        asked += 1
        words = qa.question.removeprefix("What color is the ").removesuffix("?")
        if words.endswith(" shape") and words.split()[0].endswith("most"):
            side = {"leftmost": ("x", -1), "rightmost": ("x", 1), "topmost": ("y", -1), "bottommost": ("y", 1)}
            axis, s = side[words.split()[0]]
            (target,) = [a for a in scene.shapes
                         if all(shapes.apart_on_axis(a, o, axis) == s for o in scene.shapes if o is not a)]
        else:
            kind, rest = words.split(" ", 1)
            relation, ref_name = next((r, rest.removeprefix(r + " the ")) for r in
                                      ("to the left of", "to the right of", "above", "below") if rest.startswith(r))
            axis, s = {"to the left of": ("x", -1), "to the right of": ("x", 1), "above": ("y", -1),
                       "below": ("y", 1)}[relation]
            (ref,) = [a for a in scene.shapes if a.name == ref_name]
            (target,) = [a for a in scene.shapes if a is not ref and a.kind == kind
                         and shapes.apart_on_axis(a, ref, axis) == s]
        assert qa.answer == target.color.capitalize()
    assert asked > 100 and max(counts) == 6 and min(counts) == 2


def test_the_default_scenes_are_unchanged_by_the_new_options():
    a = shapes.random_scene(np.random.default_rng(7))
    b = shapes.random_scene(np.random.default_rng(7), min_shapes=1, max_shapes=3, shape_scale=1.0)
    assert a == b and 1 <= len(a.shapes) <= 3
    with pytest.raises(ValueError, match="max_shapes"):
        shapes.random_scene(np.random.default_rng(0), max_shapes=7)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["ablate", "--study", "loss", "--seeds", "0", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "visualrwkv ablate: error: --seeds must be at least 1, got 0"
    assert main(["ablate", "--study", "loss", "--report-only", "--out", str(tmp_path / "none")]) == 1
    assert "holds no results" in capsys.readouterr().err
