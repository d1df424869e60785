"""Two nodes under torchrun on loopback give the single-node result bit for bit.

The test starts two ``torchrun`` node processes itself (``--nnodes=2``, one rank each, c10d
rendezvous on 127.0.0.1 with the same ``--rdzv-id``; node 0 hosts the rendezvous store, every
address is loopback: ``--local-addr``, ``GLOO_SOCKET_IFNAME=lo``). Each rank trains with one
torch thread. The run is SCAFFOLD with central evaluation every round, so a round uses every
path of the fleet: the broadcast of the model, a client's control variate sent point to point
to the rank that trains it, the gather of the results, the reduce of the test metrics. Both
node processes live in sessions of their own and are killed, whatever happens, when the test
ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch

from fedloom.cli import main as cli_main
from tests.fleets.test_distributed import CONFIG, SMALL, final_model, free_port, rows, torchrun

RUN = [*SMALL, "algorithm.name=scaffold", "fleet.kind=distributed"]
TIMEOUT = 150.0


def node_command(node_rank: int, port: int, rdzv_id: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={node_rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=is_host={1 if node_rank == 0 else 0},join_timeout=60",
            "--local-addr=127.0.0.1", "--max-restarts=0", "--monitor-interval=0.1", *args]


def node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(FEDLOOM_DIST_TIMEOUT="60", OMP_NUM_THREADS="1", FEDLOOM_OFFLINE="1",
               GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return env


@contextmanager
def nodes(args: Sequence[str], cwd: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """The two node processes, each in a session of its own; both killed on the way out."""
    port, rdzv_id = free_port(), uuid.uuid4().hex[:12]
    procs: list[subprocess.Popen[str]] = []
    try:
        for node_rank in (0, 1):
            procs.append(subprocess.Popen(
                node_command(node_rank, port, rdzv_id, args), cwd=cwd, env=node_env(),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True))
        yield procs
    finally:
        for proc in procs:
            kill_tree(proc.pid)
            proc.communicate()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a node process and its ranks: torchrun starts each rank in a session of its
    own, so killing the node's process group alone would leave them running."""
    for _ in range(2):  # a second pass for anything started while the first one ran
        for p in process_tree(pid):
            with suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def wait_all(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str]]:
    """Each process' exit code and output; a test failure if any outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a torchrun node outlived {timeout} s")  # nodes() kills both
        results.append((proc.returncode, out))
    return results


@pytest.mark.slow
@pytest.mark.integration
def test_two_nodes_are_bitwise_one_node_and_the_serial_fleet(tmp_path: Path) -> None:
    serial = tmp_path / "serial"
    assert cli_main(["run", CONFIG, *SMALL, "algorithm.name=scaffold", f"out={serial}",
                     "--quiet"]) == 0
    one_cwd, one = tmp_path / "one_cwd", tmp_path / "one"
    one_cwd.mkdir()
    single = torchrun(2, ["-m", "fedloom", "run", CONFIG, *RUN, f"out={one}", "--quiet"],
                      one_cwd, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr
    two_cwd, two = tmp_path / "two_cwd", tmp_path / "two"
    two_cwd.mkdir()
    with nodes(["-m", "fedloom", "run", CONFIG, *RUN, f"out={two}", "--quiet"], two_cwd) as ps:
        done = wait_all(ps, TIMEOUT)
    assert all(code == 0 for code, _ in done), "\n".join(out for _, out in done)
    expected, reference, got = final_model(one), final_model(serial), final_model(two)
    assert set(got) == set(expected) and all(torch.equal(expected[k], got[k]) for k in got)
    assert all(torch.equal(reference[k], got[k]) for k in got)
    assert not torch.equal(got["1.weight"], torch.zeros_like(got["1.weight"]))
    for want, have in zip(rows(one), rows(two), strict=True):
        for key in ("round", "num_results", "train_loss", "test_loss", "test_accuracy"):
            assert have[key] == want[key], key
    # one rank wrote the run directory and reported; neither node left anything in its cwd
    assert sum("final test accuracy" in out for _, out in done) == 1
    assert list(two_cwd.iterdir()) == []


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.integration
def test_both_nodes_and_their_ranks_are_killed_when_the_test_fails(tmp_path: Path) -> None:
    """A failing test body (here: ranks that hang) leaves no node or rank process behind."""
    script = tmp_path / "hang.py"
    script.write_text("import os, pathlib, time\n"
                      "pathlib.Path(f\"rank{os.environ['RANK']}.pid\").write_text(str(os.getpid()))\n"
                      "time.sleep(600)\n")
    pids: list[int] = []
    with pytest.raises(TimeoutError), nodes([str(script)], tmp_path) as procs:
        pids += [p.pid for p in procs]
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("rank*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = sorted(tmp_path.glob("rank*.pid"))
        assert [p.name for p in ranks] == ["rank0.pid", "rank1.pid"]  # a world of 2 ranks
        pids += [int(p.read_text()) for p in ranks]
        raise TimeoutError("the ranks hang")
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in pids), pids
