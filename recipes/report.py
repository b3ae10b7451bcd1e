"""The evaluator's report rendered for people: a Markdown summary and PNG plots.

`summary_markdown` turns ``report.json`` (built by ``recipes.evaluate``) into a page of counts, problems,
headline metrics with their intervals and slices; `write_plots` draws each metric group's plot, of the kind
its task chose (`data_prep.metrics.Group.plot`): a calibration curve or a confusion matrix.

Examples:
    python -c "import json; from recipes.report import summary_markdown; print(summary_markdown(json.load(open('work/eval/report.json'))))"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.metrics import Group


def fmt(x) -> str:
    """A metric value for a table cell: 3 decimals, ``n/a`` for None."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def fmt_ci(value, ci) -> str:
    """A metric value with its interval, ``0.812 [0.790, 0.833]``, when there is one."""
    text = fmt(value)
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else text


def summary_markdown(report: dict) -> str:
    """The report as a Markdown page: counts, problems, headline metrics with intervals, slices.

    Examples:
        python -c "import json; from recipes.evaluate import summary_markdown; print(summary_markdown(json.load(open('work/eval/report.json'))))"
    """
    c = report["counts"]
    out = [
        f"# Evaluation of {report['model'] or '(unnamed model)'}",
        "",
        f"- predictions: `{report['predictions']}`",
        f"- references: `{report['references']}`",
        f"- stage: {report['stage']} (used: {report['stages_used']})",
        "",
        "| references | scored | parse failures | missing | unsupported | extra ids | malformed lines | duplicates |",
        "|---|---|---|---|---|---|---|---|",
        f"| {c['references']} | {c['scored']} | {c['parse_failures']} | {c['missing']} | {c['unsupported']} "
        f"| {c['extra']} | {c['malformed_lines']} | {c['duplicate_lines']} |",
        "",
    ]
    kinds = {k: v for k, v in report["parse_failures"]["by_kind"].items() if v}
    if kinds:
        out += ["Parse failures by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.items()), ""]
    if report["malformed_lines"]["by_kind"]:
        out += [
            "Malformed lines by kind: "
            + ", ".join(f"{k} {v}" for k, v in report["malformed_lines"]["by_kind"].items()),
            "",
        ]
    if report["unsupported_tasks"]:
        out += [f"Tasks without an answer parser (not scored): {', '.join(report['unsupported_tasks'])}", ""]
    level = report.get("bootstrap", {}).get("confidence")
    for task, fields in report["tasks"].items():
        for name, entry in fields.items():
            head, ci = entry["headline"], entry.get("ci", {})
            n = entry["metrics"].get("n", entry["metrics"].get("uncensored", {}).get("n"))
            title = f"## {task}: {name}"
            if level:
                title += f" ({level:.0%} bootstrap intervals)"
            out += [title, ""]
            if "decision" in entry:
                out += [f"Predicted leaver: {entry['decision']}.", ""]
            out += ["| metric | value |", "|---|---|"]
            out += [f"| {k} | {fmt_ci(v, ci.get(k))} |" for k, v in head.items()]
            if "uncensored" in entry["metrics"]:  # a duration group (data_prep.metrics.duration_metrics)
                m = entry["metrics"]
                out += [
                    f"| uncensored n | {m['uncensored']['n']} |",
                    f"| predicted none (uncensored) | {m['uncensored']['predicted_none']} |",
                    f"| censored n | {m['censored']['n']} |",
                ]
            elif n is not None:
                out += [f"| n | {n} |"]
            out.append("")
            for f, rows in entry["slices"].items():
                keys = [k for k in head]
                out += [
                    f"By {f}:",
                    "",
                    "| " + " | ".join([f, "n", *keys]) + " |",
                    "|" + "---|" * (len(keys) + 2),
                ]
                out += [
                    "| " + " | ".join([r["value"], str(r["n"]), *(fmt(r[k]) for k in keys)]) + " |"
                    for r in rows
                ]
                out.append("")
    if "stage_comparison" in report:
        out += stage_comparison_markdown(report["stage_comparison"], level)
    return "\n".join(out) + "\n"


def fmt_diff(m: dict) -> str:
    """A paired difference with its interval, ``+0.141 [+0.062, +0.234]``."""
    if m["difference"] is None:
        return "n/a"
    text = f"{m['difference']:+.3f}"
    return f"{text} [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]" if m.get("ci") else text


def stage_comparison_markdown(comparison: dict, level: float | None) -> list[str]:
    """The stage comparison of a report (``recipes.evaluate.compare_stages``): its sentence, then per metric group
    a table of stage 1, stage 2 and the paired difference, the decisions stage 2 changed, and the slices."""
    out = ["## Stage 2 (personalised) against stage 1 (profile)", "", comparison["summary"], ""]
    interval = f", paired {level:.0%} bootstrap interval" if level else ""
    for task, entry in comparison["tasks"].items():
        for name, g in entry["groups"].items():
            out += [
                f"### {task}: {name} ({g['n']} people with both stages)",
                "",
                f"| metric | stage 1 | stage 2 | stage 2 - stage 1{interval} |",
                "|---|---|---|---|",
            ]
            out += [
                f"| {k} | {fmt(m['stage1'])} | {fmt(m['stage2'])} | {fmt_diff(m)} |"
                for k, m in g["metrics"].items()
            ]
            out.append("")
            if "decisions" in g:
                d = g["decisions"]
                out += [
                    f"Stage 2 changed {d['changed']} of {g['n']} answers: {d['to_right']} to right, "
                    f"{d['to_wrong']} to wrong, {d['wrong_to_wrong']} from one wrong answer to another.",
                    "",
                ]
            for f, rows in g["slices"].items():
                keys = list(g["metrics"])
                out += [
                    f"By {f} (stage 1 / stage 2, difference):",
                    "",
                    "| " + " | ".join([f, "n", *keys]) + " |",
                    "|" + "---|" * (len(keys) + 2),
                ]
                out += [
                    "| "
                    + " | ".join(
                        [
                            r["value"],
                            str(r["n"]),
                            *(
                                f"{fmt(r['metrics'][k]['stage1'])} / {fmt(r['metrics'][k]['stage2'])}, "
                                f"{fmt_diff(r['metrics'][k])}"
                                for k in keys
                            ),
                        ]
                    )
                    + " |"
                    for r in rows
                ]
                out.append("")
    return out


def write_plots(report: dict, groups: list[Group], out_dir: Path) -> list[Path]:
    """Each group's plot as a PNG file: ``calibration_<task>.png`` or ``confusion_<task>_<field>.png``.

    A group with ``plot="calibration"`` is drawn from its arrays ``y`` (bool) and ``p`` (probability), with
    its metrics' calibration bins; one with ``plot="confusion"`` from its metrics' ``confusion`` matrix.

    Examples:
        python -c "import recipes.report as r; help(r.write_plots)"
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay

    paths = []
    for g in groups:
        if not g.plot:
            continue
        entry = report["tasks"][g.task][g.name]
        if g.plot == "calibration":
            fig, ax = plt.subplots(figsize=(5, 5))
            CalibrationDisplay.from_predictions(
                g.data["y"],
                g.data["p"],
                n_bins=entry["metrics"]["calibration"]["bins"],
                ax=ax,
                name=report["model"],
            )
            path = out_dir / f"calibration_{g.task}.png"
        elif g.plot == "confusion":
            conf = entry["metrics"]["confusion"]
            size = max(5.0, 0.6 * len(conf["labels"]) + 2)
            fig, ax = plt.subplots(figsize=(size, size))
            ConfusionMatrixDisplay(np.asarray(conf["matrix"]), display_labels=conf["labels"]).plot(
                ax=ax, xticks_rotation=45, colorbar=False
            )
            plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
            path = out_dir / f"confusion_{g.task}_{g.name}.png"
        else:
            raise ValueError(
                f"group {g.task}/{g.name} asks for plot={g.plot!r}; use calibration or confusion"
            )
        ax.set_title(g.title.format(n=len(g), name=g.name))
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
