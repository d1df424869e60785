"""The sweep report from a hand-made sweep directory with known numbers, and its HTML rendered
in headless Chromium (skipped where no Chromium is installed)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.reporting.report import summarize_rows, write_report
from fedloom.runtime.sinks import Row
from fedloom.scheduler import Stage, StateStore

#: config -> seed -> test accuracy per round (None: not evaluated), or an error: failed in train
CURVES: dict[str, dict[int, list[float | None] | str]] = {
    "lr-0.1": {0: [None, 0.8, 0.7], 1: [0.6, 0.7, 0.9]},
    "lr-0.5": {0: [0.1, 0.2, 0.3], 1: "ValueError: boom | <b>"},
}
WALL = {("lr-0.1", 0): 10.0, ("lr-0.1", 1): 12.0, ("lr-0.5", 0): 4.0, ("lr-0.5", 1): 1.0}


def make_sweep_dir(root: Path) -> Path:
    tasks = []
    store = StateStore(root / "state.sqlite")
    store.acquire()
    for config_id, seeds in CURVES.items():
        for seed, curve in seeds.items():
            task_id = f"{config_id}_seed-{seed}"
            tasks.append({"task_id": task_id, "config_id": config_id, "seed": seed,
                          "params": {"client.lr": float(config_id[3:])}})
            store.register(task_id, "g", "fp")
            store.claim(task_id, attempts=1)
            if isinstance(curve, str):
                store.fail(task_id, stage=Stage.TRAIN, error=curve)
                continue
            workdir = root / "tasks" / task_id
            workdir.mkdir(parents=True)
            rows = [{"round": r + 1, "test_accuracy": a, "train_loss": 1.0}
                    for r, a in enumerate(curve)]
            (workdir / "metrics.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows) + '{"round": 4, "test_acc')
            store.finish(task_id, {}, None)
    store.release()
    store.close()
    with sqlite3.connect(root / "state.sqlite") as db:
        for (config_id, seed), wall in WALL.items():
            db.execute("UPDATE tasks SET started_at = 100, ended_at = ? WHERE task_id = ?",
                       (100 + wall, f"{config_id}_seed-{seed}"))
    (root / "sweep.json").write_text(json.dumps({
        "name": "demo", "target_accuracy": 0.75, "grid_keys": ["client.lr"], "tasks": tasks}))
    return root


def test_summaries_of_a_run() -> None:
    rows: list[Row] = [{"round": 1, "test_accuracy": None}, {"round": 2, "test_accuracy": 0.8},
                       {"round": 3, "test_accuracy": 0.7}]
    assert summarize_rows(rows, 0.75) == {"final_accuracy": 0.7, "best_accuracy": 0.8,
                                          "best_round": 2, "rounds": 3, "rounds_to_target": 2}
    assert summarize_rows(rows, 0.9)["rounds_to_target"] is None
    assert summarize_rows([], None)["final_accuracy"] is None


def test_report_table_csv_plots_and_failures(tmp_path: Path) -> None:
    files = write_report(make_sweep_dir(tmp_path))
    md = files.markdown.read_text()
    assert ("| lr-0.1 | 0.1 | 2/2 | 0.8000 ± 0.1414 | 0.8500 ± 0.0707 | 2.5 ± 0.7 (2/2) "
            "| 11.0 ± 1.4 |") in md
    assert "| lr-0.5 | 0.5 | 1/2 | 0.3000 | 0.3000 | not reached (0/1) | 4.0 |" in md
    assert "| lr-0.5_seed-1 | train |  | ValueError: boom \\| <b> |" in md
    assert "3 finished, 1 failed" in md and "rounds to 0.75" in md
    assert [p.name for p in files.plots] == ["overview.png", "lr-0.1.png", "lr-0.5.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in files.plots)
    assert "![lr-0.1](plots/lr-0.1.png)" in md
    lines = files.csv.read_text().splitlines()
    assert lines[0].startswith("task_id,config_id,seed,client.lr,status,final_accuracy,")
    assert lines[1].startswith("lr-0.1_seed-0,lr-0.1,0,0.1,finished,0.7,0.8,2,3,2,10.0,")
    assert "lr-0.5_seed-1,lr-0.5,1,0.5,failed,,,,0,,1.0," in lines[4]
    page = files.html.read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "ValueError: boom | &lt;b&gt;" in page and "<b>" not in page
    assert not re.search(r'(src|href)="(https?:|//)|<script|<link', page)  # nothing to fetch


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(make_sweep_dir(tmp_path))]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path), "x=1"]) == 2


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)


def run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120)


def test_the_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary (apt-get install -y --no-install-recommends chromium)")
    page = write_report(make_sweep_dir(tmp_path / "sweep")).html
    dom = run_chromium(binary, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    cells = re.findall(r"<td>([^<]*)</td>", dom.stdout)
    assert "lr-0.1" in cells and "0.8000 ± 0.1414" in cells and "lr-0.5_seed-1" in cells
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', dom.stdout)) == 3

    shot = tmp_path / "shot.png"
    done = run_chromium(binary, f"--screenshot={shot}", "--window-size=1000,2400",
                        "--hide-scrollbars", page.as_uri())
    assert shot.is_file(), done.stderr
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # matplotlib's first line colour (tab:blue) is only in the plots: they were drawn
    blue = int((np.abs(pixels - np.array([31, 119, 180])).sum(axis=-1) < 40).sum())
    assert blue > 200, blue
