"""The studies' results as tables (markdown, JSON), one plot per study and a verdict line per study.

Accuracies are in percent. An arm's spread is the standard deviation of its held-out accuracy over
seeds (ddof 1); a difference between two arms "exceeds the seed spread" when it is larger than the
larger of the two arms' spreads. Seeds are paired (seed s of every arm starts from the same seed),
so each verdict also says on how many seeds the paper's better arm won.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from ..utils import atomic_write
from .studies import Claim, Study


def arm_stats(results: list[dict], arm_key: str) -> dict | None:
    """Mean ± std over seeds, overall and per question type, of one arm's results (None: no run yet)."""
    runs = sorted((r for r in results if r["arm_key"] == arm_key), key=lambda r: r["seed"])
    if not runs:
        return None

    def summary(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    types = sorted({t for r in runs for t in r["per_type"] if t != "all"})
    return {"seeds": [r["seed"] for r in runs], "n": len(runs),
            "overall": summary([100 * r["accuracy"] for r in runs]),
            "by_seed": {r["seed"]: 100 * r["accuracy"] for r in runs},
            "per_type": {t: summary([100 * r["per_type"][t]["accuracy"] for r in runs if t in r["per_type"]])
                         for t in types}}


def claim_verdict(claim: Claim, a: dict | None, b: dict | None) -> dict:
    """How one claimed step of the ordering came out: a = the claimed better (or equal) arm's stats."""
    if a is None or b is None:
        return {"status": "not run", "text": f"{claim.better} vs {claim.worse}: not run yet"}
    diff = a["overall"]["mean"] - b["overall"]["mean"]
    spread = max(a["overall"]["std"], b["overall"]["std"])
    paired = sorted(set(a["by_seed"]) & set(b["by_seed"]))
    wins = sum(a["by_seed"][s] > b["by_seed"][s] for s in paired)
    n = min(a["n"], b["n"])
    beyond = n > 1 and abs(diff) > spread
    where = (f"the seed spread of {spread:.1f}" if n > 1 else "no spread: one seed")
    if claim.equal:
        holds = n > 1 and not beyond
        relation = "≈" if holds else ("within" if n == 1 else "≠")
        text = (f"{claim.better} {a['overall']['mean']:.1f}% vs {claim.worse} {b['overall']['mean']:.1f}%: "
                f"{diff:+.1f} points, {'within' if not beyond else 'beyond'} {where}")
        status = "holds" if holds else ("unclear on one seed" if n == 1 else "does not hold")
        return {"status": status, "diff": diff, "spread": spread, "relation": relation, "text": text,
                "wins": wins, "paired": len(paired)}
    relation = ">" if diff > 0 else ("=" if diff == 0 else "<")
    text = (f"{claim.better} {a['overall']['mean']:.1f}% {relation} {claim.worse} {b['overall']['mean']:.1f}% "
            f"({diff:+.1f} points, {'more' if beyond else 'less'} than {where}"
            if n > 1 else f"{claim.better} {a['overall']['mean']:.1f}% {relation} {claim.worse} "
            f"{b['overall']['mean']:.1f}% ({diff:+.1f} points, {where}")
    text += f"; better on {wins} of {len(paired)} seeds)" if paired else ")"
    if n == 1:
        status = "holds on one seed" if diff > 0 else "does not hold on one seed"
    elif diff <= 0:
        status = "reversed" if beyond else "does not hold"
    else:
        status = "holds" if beyond else "holds, within the seed spread"
    return {"status": status, "diff": diff, "spread": spread, "relation": relation, "text": text,
            "wins": wins, "paired": len(paired)}


def study_verdict(study: Study, stats: dict[str, dict | None], chance: float | None = None) -> dict:
    """One line for the whole study, from its claims' verdicts."""
    claims = [claim_verdict(c, stats.get(c.better), stats.get(c.worse)) for c in study.claims]
    statuses = [c["status"] for c in claims]
    ordering = " ; ".join(_claim_text(c) for c in study.claims)
    if "not run" in statuses:
        head = "not all arms have run yet"
    elif any(s.endswith("one seed") for s in statuses):
        kept = sum(s.startswith("holds") for s in statuses)
        head = (f"on one seed (no spread to judge by), {kept} of {len(statuses)} steps of the paper's ordering "
                "hold here")
    elif all(s == "holds" for s in statuses):
        head = "the paper's ordering holds here, beyond the seed spread"
    elif all(s.startswith("holds") for s in statuses):
        head = "the paper's ordering holds here in the means, but not beyond the seed spread"
    elif any(s == "reversed" for s in statuses):
        head = "the paper's ordering does not hold here: reversed, beyond the seed spread"
    elif any(s.startswith("holds") for s in statuses):
        head = "the paper's ordering holds here only in part"
    else:
        head = "the paper's ordering does not hold here"
    line = f"{study.name} (paper: {ordering}): {head} — " + "; ".join(c["text"] for c in claims) + "."
    arms = [s for s in stats.values() if s is not None]
    if chance is not None and arms and max(s["overall"]["mean"] for s in arms) < chance + 5:
        line += (f" Every arm is within 5 points of the majority-answer baseline ({chance:.1f}%): "
                 "the models learned too little for the comparison to mean much.")
    return {"study": study.name, "status": head, "claims": claims, "text": line}


def _claim_text(claim: Claim) -> str:
    return f"{claim.better} {'≈' if claim.equal else '>'} {claim.worse}"


def majority_baseline(data_dir: Path) -> dict | None:
    """Held-out accuracy of always giving each question type's most common training answer (percent)."""
    train, test = data_dir / "stage2.json", data_dir / "test.json"
    if not (train.is_file() and test.is_file()):
        return None
    common: dict[str, Counter] = {}
    for row in json.loads(train.read_text()):
        common.setdefault(row["question_type"], Counter())[row["conversations"][1]["value"]] += 1
    hits, totals = Counter(), Counter()
    for row in json.loads(test.read_text()):
        t = row["question_type"]
        totals[t] += 1
        hits[t] += t in common and row["conversations"][1]["value"] == common[t].most_common(1)[0][0]
    if not totals:
        return None
    return {"overall": 100 * sum(hits.values()) / sum(totals.values()),
            "per_type": {t: 100 * hits[t] / totals[t] for t in sorted(totals)}}


def build_report(studies: list[Study], results: list[dict], data_dir: Path | None = None) -> dict:
    chance = majority_baseline(data_dir) if data_dir else None
    report = {"chance": chance, "studies": []}
    for study in studies:
        stats = {arm.name: arm_stats(results, arm.key) for arm in study.arms}
        verdict = study_verdict(study, stats, chance["overall"] if chance else None)
        report["studies"].append({
            "study": study.name, "paper_source": study.paper_source, "notes": list(study.notes),
            "arms": [{"arm": arm.name, "key": arm.key, "paper": arm.paper, **(stats[arm.name] or {"n": 0})}
                     for arm in study.arms],
            "verdict": verdict})
    return report


def markdown(report: dict) -> str:
    types = sorted({t for s in report["studies"] for a in s["arms"] for t in a.get("per_type", {})})
    chance = report.get("chance")
    lines = []
    for s in report["studies"]:
        lines += [f"### {s['study']}", "", f"Paper's numbers: {s['paper_source']}."]
        lines += [f"Note: {n}." for n in s["notes"]]
        lines += ["", "Held-out accuracy (%), mean ± standard deviation over seeds (one seed: its value).", "",
                  "| arm | seeds | overall | " + " | ".join(types) + " | paper |",
                  "|---|---|---|" + "---|" * len(types) + "---|"]
        for a in s["arms"]:
            if not a["n"]:
                lines.append(f"| {a['arm']} | 0 | not run | " + " | ".join("" for _ in types) + f" | {_paper(a)} |")
                continue
            cells = [_pm(a["per_type"][t], a["n"]) if t in a["per_type"] else "" for t in types]
            lines.append(f"| {a['arm']} | {a['n']} | **{_pm(a['overall'], a['n'])}** | " + " | ".join(cells)
                         + f" | {_paper(a)} |")
        if chance:
            lines.append("| *majority answer* | | " + f"{chance['overall']:.1f} | "
                         + " | ".join(f"{chance['per_type'].get(t, 0):.1f}" for t in types) + " | |")
        lines += ["", f"**Verdict.** {s['verdict']['text']}", ""]
    return "\n".join(lines)


def _pm(summary: dict, n: int) -> str:
    return f"{summary['mean']:.1f} ± {summary['std']:.1f}" if n > 1 else f"{summary['mean']:.1f}"


def _paper(arm: dict) -> str:
    return "—" if arm["paper"] is None else f"{arm['paper']:.2f}"


def plot_study(study_report: dict, path: Path, chance: float | None = None) -> None:
    """Bars: mean held-out accuracy ± std over seeds, the seeds as dots, the paper's number under each
    arm, the majority-answer baseline as a dashed line."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = study_report["arms"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(arms), 3.6))
    for x, a in enumerate(arms):
        if not a["n"]:
            continue
        ax.bar(x, a["overall"]["mean"], yerr=a["overall"]["std"], capsize=5, color="#6a9fd4", alpha=0.85)
        seeds = list(a["by_seed"].values())
        ax.scatter([x + 0.12 * (i - (len(seeds) - 1) / 2) for i in range(len(seeds))], seeds, color="black",
                   s=12, zorder=3)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
        ax.text(len(arms) - 0.45, chance, "majority answer", fontsize=7, color="grey", ha="right", va="bottom")
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a["arm"].replace(" (", "\n(") + f"\npaper {_paper(a)}" for a in arms], fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(f"{study_report['study']}: {study_report['verdict']['status']}", 60)),
                 fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_report(studies: list[Study], results: list[dict], out: Path) -> dict:
    """results.md, results.json and a PNG per study in `out`; returns the report."""
    report = build_report(studies, results, out / "data")
    with atomic_write(out / "results.json", "w") as f:
        json.dump(report, f, indent=1)
    with atomic_write(out / "results.md", "w") as f:
        f.write(markdown(report) + "\n")
    for s in report["studies"]:
        plot_study(s, out / f"{s['study']}.png", report["chance"]["overall"] if report["chance"] else None)
    return report
