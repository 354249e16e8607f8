"""What each ablation study compares: its arms, the paper's numbers and the ordering the paper claims.

An arm is the baseline recipe with one factor changed. Factors and their baseline values (the
v6.0 paper's choices): image position `middle` (the sandwich), `bidirection` scanning, RWKV-6's
data-dependent decay, the sample-level loss, and one stage (the small runs train the questions
directly; the `stages` study adds the caption stage as its second arm), on the questions alone. Arms
of different studies that end up with the same factors are the same runs (the baseline is trained
once per seed).

The loss study trains on questions and captions mixed (`mix`): every short answer here is one token
and its stop, so on questions alone the two reductions are the same number and the runs came out
bit-identical. The paper's case is the LLaVA mix, long answers beside short ones, where a token-level
mean gives the long ones the weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASELINE = {"position": "middle", "scanning": "bidirection", "decay": "rwkv6", "loss": "sample", "stages": 1,
            "mix": "questions"}
FACTOR_VALUES = {
    "position": ("first", "last", "middle"),
    "scanning": ("unidirection", "bidirection", "multidirection"),
    "decay": ("rwkv6", "static", "rwkv7"),
    "loss": ("sample", "token"),
    "stages": (1, 2),
    "mix": ("questions", "questions+captions"),
}


@dataclass(frozen=True)
class Arm:
    name: str  # as the table shows it
    factors: dict  # the baseline with this study's factor changed
    paper: float | None  # the paper's number for this setting (None: not published)

    @property
    def key(self) -> str:
        """The run's identity: its factor values (the same for the same runs in different studies)."""
        f = self.factors
        mix = "" if f["mix"] == "questions" else "-captions"
        return f"{f['position']}-{f['scanning']}-{f['decay']}-{f['loss']}-{f['stages']}stage{mix}"


@dataclass(frozen=True)
class Claim:
    """One step of the paper's ordering: `better` beats `worse`, or (`equal`) they match."""

    better: str
    worse: str
    equal: bool = False


@dataclass(frozen=True)
class Study:
    name: str
    factor: str
    arms: tuple[Arm, ...]
    claims: tuple[Claim, ...]
    paper_source: str  # where the paper's numbers are from, and on which benchmark
    notes: tuple[str, ...] = field(default=())

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def _arm(name: str, factor: str, value, paper: float | None, **fixed) -> Arm:
    return Arm(name, {**BASELINE, **fixed, factor: value}, paper)


STUDIES = {
    "position": Study(
        "position", "position",
        (_arm("first", "position", "first", 67.93), _arm("last", "position", "last", 63.07),
         _arm("sandwich", "position", "middle", 69.71)),
        (Claim("sandwich", "first"), Claim("first", "last")),
        "paper Tab. 3, 7B-Base, VQA (SPEC §7.3)"),
    "scanning": Study(
        "scanning", "scanning",
        (_arm("uni", "scanning", "unidirection", None), _arm("bi", "scanning", "bidirection", 69.26),
         _arm("multi", "scanning", "multidirection", 69.20)),
        (Claim("bi", "uni"), Claim("multi", "bi", equal=True)),
        "paper Tab. 4, 1.6B, VQA, with data-dependent decay (SPEC §6)",
        ("the paper gives UniDir only without data-dependent decay (51.03, vs BiDir 65.62 there)",)),
    "decay": Study(
        "decay", "decay",
        (_arm("static (RWKV-6, no decay LoRA)", "decay", "static", 65.62),
         _arm("data-dependent (RWKV-6)", "decay", "rwkv6", 69.26), _arm("RWKV-7", "decay", "rwkv7", None)),
        (Claim("data-dependent (RWKV-6)", "static (RWKV-6, no decay LoRA)"),),
        "paper Tab. 4, 1.6B, VQA, bidirectional scanning (SPEC §6)",
        ("the paper has no RWKV-7 arm; it is shown for comparison, with no claim",)),
    "loss": Study(
        "loss", "loss",
        (_arm("token-level", "loss", "token", 47.94, mix="questions+captions"),
         _arm("sample-level", "loss", "sample", 56.62, mix="questions+captions")),
        (Claim("sample-level", "token-level"),),
        "paper App. D Tab. 7, 1.6B, ScienceQA (SPEC §7.6)",
        ("both arms train on the questions and the captions mixed (a long answer beside each three one-word "
         "ones); on one-word answers alone the two losses are the same",)),
    "stages": Study(
        "stages", "stages",
        (_arm("one stage", "stages", 1, None), _arm("two stages", "stages", 2, None)),
        (Claim("two stages", "one stage"),),
        "paper App. C: two stages beat one (no number in SPEC §8.1)",
        ("two stages = the caption stage (image first) before the same question stage: more training, "
         "as in the paper, where dropping stage 1 is the alternative",)),
}
STUDY_NAMES = tuple(STUDIES)


def studies_of(name: str) -> list[Study]:
    if name == "all":
        return list(STUDIES.values())
    if name not in STUDIES:
        raise ValueError(f"--study must be one of {', '.join(STUDY_NAMES)} or all, got {name!r}")
    return [STUDIES[name]]


def distinct_arms(studies: list[Study]) -> list[Arm]:
    """Every run configuration the studies need, each once (in study order)."""
    seen: dict[str, Arm] = {}
    for study in studies:
        for arm in study.arms:
            seen.setdefault(arm.key, arm)
    return list(seen.values())
