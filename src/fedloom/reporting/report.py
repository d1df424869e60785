"""The report of a sweep: ``report.html``, ``report.md`` and ``results.csv`` in the sweep dir.

One row per configuration (grid point): mean +/- standard deviation over its seeds of the final
and best test accuracy, the rounds to reach the target accuracy and the wall time; accuracy
against round for every configuration; every failure with its stage and message. The numbers
come from each task's ``metrics.jsonl`` (the source of truth) and the scheduler's state. The
HTML embeds its plots as base64 PNG, so it opens from disk with no server and no network; the
Markdown links the same plots, written beside it under ``plots/``. Runs with TensorBoard event
files (``sinks: [jsonl, tensorboard]``) are linked, with the command that shows them together.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedloom.core.errors import ConfigError
from fedloom.runtime.sinks import TENSORBOARD_DIR, Row, read_rows, top_rows


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportFiles:
    html: Path
    markdown: Path
    csv: Path
    plots: tuple[Path, ...]


def accuracy_curve(rows: Sequence[Row]) -> list[tuple[int, float]]:
    """(round, test accuracy) of every evaluated round."""
    return [(int(r.get("round") or 0), float(acc)) for r in rows
            if (acc := r.get("test_accuracy")) is not None]


def summarize_rows(rows: Sequence[Row], target: float | None) -> dict[str, float | int | None]:
    """Final and best test accuracy, the round of the best, rounds run, first round >= target,
    and, for a private run (fedloom.privacy), the epsilon spent by its last round."""
    rows = top_rows(list(rows))
    curve = accuracy_curve(rows)
    best = max(curve, key=lambda ra: ra[1], default=None)
    reached = [rnd for rnd, acc in curve if target is not None and acc >= target]
    spent = next((float(e) for r in reversed(rows)
                  if isinstance(e := r.get("epsilon"), int | float)), None)
    privacy = {} if spent is None else {"epsilon": spent}  # a private run's budget spent
    return {**privacy, "final_accuracy": curve[-1][1] if curve else None,
            "best_accuracy": best[1] if best else None,
            "best_round": best[0] if best else None,
            "rounds": max((int(r["round"] or 0) for r in rows), default=0),
            "rounds_to_target": reached[0] if reached else None}


@dataclass(slots=True, kw_only=True)
class TaskNumbers:
    task_id: str
    config_id: str
    seed: int | None
    params: dict[str, object]
    status: str
    stage: str | None = None
    error: str | None = None
    exit_code: int | None = None
    device: str | None = None
    starts: int = 0
    wall_seconds: float | None = None
    summary: dict[str, float | int | None] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)


def collect(sweep_dir: Path) -> tuple[dict[str, object], list[TaskNumbers]]:
    """The sweep's manifest and every task's numbers."""
    from fedloom.scheduler.database import StateStore

    manifest_path = sweep_dir / "sweep.json"
    if not manifest_path.is_file():
        raise ConfigError(f"{str(sweep_dir)!r} is not a sweep directory (no sweep.json); "
                          "run `fedloom sweep SWEEP.yaml --out DIR` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    target = manifest.get("target_accuracy")
    state = StateStore(sweep_dir / "state.sqlite")
    try:
        rows = {r.task_id: r for r in state.rows()}
    finally:
        state.close()
    tasks = []
    for entry in manifest["tasks"]:
        row = rows.get(entry["task_id"])
        metrics = read_rows(sweep_dir / "tasks" / entry["task_id"] / "metrics.jsonl")
        numbers = TaskNumbers(task_id=entry["task_id"], config_id=entry["config_id"],
                              seed=entry["seed"], params=entry["params"],
                              status=row.status.value if row else "waiting")
        if row is not None:
            numbers.stage = row.stage.value if row.stage else None
            numbers.error, numbers.exit_code, numbers.device = row.error, row.exit_code, row.device
            numbers.starts, numbers.wall_seconds = row.starts, row.wall_seconds
        numbers.summary = summarize_rows(metrics, target)
        numbers.curve = accuracy_curve(metrics)
        tasks.append(numbers)
    return manifest, tasks


def _mean_std(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{mean:{fmt}} ± {statistics.stdev(values):{fmt}}"


def config_table(manifest: Mapping[str, object],
                 tasks: Sequence[TaskNumbers]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: one row per configuration, finished seeds only."""
    target = manifest.get("target_accuracy")
    keys = [str(k) for k in manifest.get("grid_keys", [])]  # type: ignore[attr-defined]
    configs: dict[str, list[TaskNumbers]] = {}
    for t in tasks:
        configs.setdefault(t.config_id, []).append(t)
    header = ["configuration", *keys, "seeds done", "final accuracy", "best accuracy",
              f"rounds to {target}" if target is not None else "rounds to target",
              "wall time (s)"]
    rows = []
    for config_id, members in configs.items():
        done = [t for t in members if t.status == "finished"]

        def values(key: str, done: list[TaskNumbers] = done) -> list[float]:
            return [float(v) for t in done if (v := t.summary.get(key)) is not None]

        reached = values("rounds_to_target")
        to_target = ("no target" if target is None else
                     f"{_mean_std(reached, '.1f') if reached else 'not reached'} "
                     f"({len(reached)}/{len(done)})")
        walls = [t.wall_seconds for t in done if t.wall_seconds is not None]
        rows.append([config_id, *(str(members[0].params.get(k, "")) for k in keys),
                     f"{len(done)}/{len(members)}", _mean_std(values("final_accuracy"), ".4f"),
                     _mean_std(values("best_accuracy"), ".4f"), to_target,
                     _mean_std(walls, ".1f")])
    return header, rows


def _plots(tasks: Sequence[TaskNumbers], out: Path, title: str) -> list[Path]:
    """``overview.png`` (mean accuracy per configuration) and one plot per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    configs: dict[str, list[TaskNumbers]] = {}
    for t in tasks:
        if t.curve:
            configs.setdefault(t.config_id, []).append(t)
    if not configs:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for config_id, members in configs.items():
        by_round: dict[int, list[float]] = {}
        for t in members:
            for rnd, acc in t.curve:
                by_round.setdefault(rnd, []).append(acc)
        rounds = sorted(by_round)
        ax.plot(rounds, [statistics.fmean(by_round[r]) for r in rounds], marker=".",
                label=config_id)
    ax.set(xlabel="round", ylabel="test accuracy (mean over seeds)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "overview.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    for config_id, members in configs.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for t in members:
            ax.plot([r for r, _ in t.curve], [a for _, a in t.curve], marker=".",
                    label=f"seed {t.seed}" if t.seed is not None else t.task_id)
        ax.set(xlabel="round", ylabel="test accuracy", title=config_id)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        paths.append(out / f"{config_id}.png")
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths


def _write_csv(path: Path, manifest: Mapping[str, object], tasks: Sequence[TaskNumbers]) -> None:
    keys = [str(k) for k in manifest.get("grid_keys", [])]  # type: ignore[attr-defined]
    summary_keys = ["final_accuracy", "best_accuracy", "best_round", "rounds",
                    "rounds_to_target"]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["task_id", "config_id", "seed", *keys, "status", *summary_keys,
                         "wall_seconds", "device", "starts", "stage", "exit_code", "error"])
        for t in tasks:
            writer.writerow([t.task_id, t.config_id, t.seed, *(t.params.get(k) for k in keys),
                             t.status, *(t.summary.get(k) for k in summary_keys),
                             t.wall_seconds, t.device, t.starts, t.stage, t.exit_code, t.error])


_CSS = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}"
        "figure{display:inline-block;margin:0.5em}img{max-width:100%}"
        ".failed td{background:#fff0f0;text-align:left}")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(c: object) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def tensorboard_links(sweep_dir: Path, tasks: Sequence[TaskNumbers]) -> list[tuple[str, str]]:
    """(task id, event-file folder relative to ``sweep_dir``) of the tasks that wrote one."""
    return [(t.task_id, f"tasks/{t.task_id}/{TENSORBOARD_DIR}") for t in tasks
            if (sweep_dir / "tasks" / t.task_id / TENSORBOARD_DIR).is_dir()]


def _tensorboard_section(sweep_dir: Path, links: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The HTML and Markdown paragraphs linking the runs' TensorBoard folders ("" for none)."""
    if not links:
        return "", ""
    command = f"tensorboard --logdir {sweep_dir / 'tasks'}"
    lead = f"{len(links)} runs wrote TensorBoard event files; all of them together: "
    html_links = ", ".join(f'<a href="{html.escape(rel)}">{html.escape(task)}</a>'
                           for task, rel in links)
    return (f"<h2>TensorBoard</h2><p>{html.escape(lead)}<code>{html.escape(command)}</code>"
            f"</p><p>{html_links}</p>",
            f"## TensorBoard\n\n{lead}`{command}`\n\n"
            + ", ".join(f"[{task}]({rel})" for task, rel in links))


def write_report(sweep_dir: str | Path) -> ReportFiles:
    """Write ``report.html``, ``report.md``, ``results.csv`` and ``plots/`` in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    manifest, tasks = collect(sweep_dir)
    name = str(manifest.get("name", sweep_dir.name))
    header, rows = config_table(manifest, tasks)
    failures = [[t.task_id, t.stage or "", "" if t.exit_code is None else t.exit_code,
                 t.error or ""] for t in tasks if t.status == "failed"]
    failure_header = ["task", "stage", "exit code", "message"]
    counts = {s: sum(t.status == s for t in tasks) for s in dict.fromkeys(t.status for t in tasks)}
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    plots = _plots(tasks, sweep_dir / "plots", name)
    _write_csv(sweep_dir / "results.csv", manifest, tasks)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    target = manifest.get("target_accuracy")
    tb_html, tb_md = _tensorboard_section(sweep_dir, tensorboard_links(sweep_dir, tasks))

    images = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>' for p in plots)
    html_text = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(name)}: sweep report</title><style>{_CSS}</style></head><body>"
        f"<h1>Sweep {html.escape(name)}</h1><p>{len(tasks)} tasks: {html.escape(status)}. "
        f"Target accuracy: {html.escape(str(target))}. Generated {stamp}. Raw numbers: "
        f'<a href="results.csv">results.csv</a>.</p><h2>Results</h2>'
        f'{_html_table(header, rows, "results")}<h2>Accuracy by round</h2>{images}{tb_html}'
        f"<h2>Failures</h2>"
        + (_html_table(failure_header, failures, "failed") if failures else "<p>None.</p>")
        + "</body></html>")
    md_text = "\n\n".join([
        f"# Sweep {name}", f"{len(tasks)} tasks: {status}. Target accuracy: {target}. "
        f"Generated {stamp}. Raw numbers: [results.csv](results.csv).",
        "## Results", _md_table(header, rows), "## Accuracy by round",
        "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) or "No rounds yet.",
        *([tb_md] if tb_md else []), "## Failures",
        _md_table(failure_header, failures) if failures else "None.", ""])
    html_path, md_path = sweep_dir / "report.html", sweep_dir / "report.md"
    html_path.write_text(html_text, encoding="utf-8")
    md_path.write_text(md_text, encoding="utf-8")
    return ReportFiles(html=html_path, markdown=md_path, csv=sweep_dir / "results.csv",
                       plots=tuple(plots))
