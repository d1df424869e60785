"""The sweep report links the runs that wrote TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

from fedloom.reporting.report import write_report
from tests.reporting.test_report import make_sweep_dir


def test_runs_with_event_files_are_linked_with_the_command(tmp_path: Path) -> None:
    sweep = make_sweep_dir(tmp_path)
    plain = write_report(sweep)
    assert "TensorBoard" not in plain.markdown.read_text()
    assert "TensorBoard" not in plain.html.read_text()
    for task in ("lr-0.1_seed-1", "lr-0.5_seed-0"):
        (sweep / "tasks" / task / "tensorboard").mkdir()
    files = write_report(sweep)
    md = files.markdown.read_text()
    assert (f"## TensorBoard\n\n2 runs wrote TensorBoard event files; all of them together: "
            f"`tensorboard --logdir {sweep / 'tasks'}`\n\n"
            "[lr-0.1_seed-1](tasks/lr-0.1_seed-1/tensorboard), "
            "[lr-0.5_seed-0](tasks/lr-0.5_seed-0/tensorboard)\n\n## Failures") in md
    page = files.html.read_text()
    assert (f"<h2>TensorBoard</h2><p>2 runs wrote TensorBoard event files; all of them "
            f"together: <code>tensorboard --logdir {sweep / 'tasks'}</code></p><p>"
            '<a href="tasks/lr-0.1_seed-1/tensorboard">lr-0.1_seed-1</a>, '
            '<a href="tasks/lr-0.5_seed-0/tensorboard">lr-0.5_seed-0</a></p>'
            "<h2>Failures</h2>") in page
