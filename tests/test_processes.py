"""Children end with their parent; Ctrl-C and SIGTERM reach them once; the launcher's exit code.

Real processes, killed at known points: a test waits for the child's ``ready`` file, then
signals. The toy children import nothing heavy, so each case takes well under a second, except
the torchrun ones (~3 s each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ctr import procs
from ctr.exitcodes import EXIT_CODES, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, exit_code_for_status

REPO = Path(__file__).resolve().parents[1]

# A child that records every SIGINT / SIGTERM it gets, then (after a moment: a checkpoint being
# saved) exits 130 / 143. Under torchrun it also writes the run's summary.json.
TOY = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    d = Path(sys.argv[1])
    def on(sig, frame):
        name = signal.Signals(sig).name
        with open(d / "signals", "a") as f:
            f.write(name + "\\n")
        time.sleep(0.5)
        if os.environ.get("TOY_SUMMARY"):
            (d / "summary.json").write_text(json.dumps({"status": "interrupted"}))
        os._exit(130 if sig == signal.SIGINT else 143)
    signal.signal(signal.SIGINT, on)
    signal.signal(signal.SIGTERM, on)
    if os.environ.get("TOY_CRASH"):
        sys.exit(1)
    if os.environ.get("TOY_STATUS"):
        (d / "summary.json").write_text(json.dumps({"status": os.environ["TOY_STATUS"]}))
        sys.exit(int(os.environ["TOY_CODE"]))
    (d / "ready").write_text(str(os.getpid()))
    time.sleep(60)
    sys.exit(0)
""")


@pytest.fixture
def toy(tmp_path) -> Path:
    (tmp_path / "toychild.py").write_text(TOY)
    return tmp_path


def _env(toy: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(toy), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def _start(code: str, toy: Path, **env: str) -> subprocess.Popen:
    """A parent process running ``code``, in a process group of its own (a terminal's job)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=toy, env=_env(toy, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"parent exited {proc.returncode} early: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail(f"{path} did not appear")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _gone(pid: int, timeout: float = 10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def _cleanup(parent: subprocess.Popen, *pids: int) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    try:
        os.killpg(parent.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    parent.wait()


RUN_CHILD = """
    import sys
    from ctr.procs import run_child
    sys.exit(run_child([sys.executable, "toychild.py", "."]))
"""


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def test_child_ends_when_its_parent_is_killed(toy):
    parent = _start(RUN_CHILD, toy)
    child = int(_wait_for(toy / "ready", parent))
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(child), "the child outlived its SIGKILLed parent"
        assert (toy / "signals").read_text() == "SIGTERM\n"
    finally:
        _cleanup(parent, child)


def test_ctrl_c_waits_for_the_child_and_returns_its_code(toy):
    """SIGINT to the whole group (what a terminal does): the child sees it once, the parent
    outlives the child's checkpoint and returns its 130, with no traceback."""
    parent = _start(RUN_CHILD, toy)
    child = int(_wait_for(toy / "ready", parent))
    try:
        os.killpg(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=20)
        assert parent.returncode == EXIT_INTERRUPTED, err
        assert "Traceback" not in err
        assert (toy / "signals").read_text() == "SIGINT\n"
        assert not _alive(child)
    finally:
        _cleanup(parent, child)


def test_sigterm_to_the_parent_is_forwarded_and_waited_for(toy):
    parent = _start(RUN_CHILD, toy)
    child = int(_wait_for(toy / "ready", parent))
    try:
        os.kill(parent.pid, signal.SIGTERM)
        parent.communicate(timeout=20)
        assert parent.returncode == 143
        assert (toy / "signals").read_text() == "SIGTERM\n"
    finally:
        _cleanup(parent, child)


def test_die_with_parent_in_a_plain_child(toy):
    """What a torchrun worker does at start: its parent (torchrun's agent) is killed -> SIGTERM."""
    parent = _start("""
        import subprocess, sys, time
        code = "from ctr.distributed.env import die_with_parent; die_with_parent(); "
        code += "import runpy, sys; sys.argv = ['toychild.py', '.']; "
        code += "runpy.run_path('toychild.py', run_name='__main__')"
        subprocess.Popen([sys.executable, "-c", code])
        time.sleep(60)
    """, toy)
    child = int(_wait_for(toy / "ready", parent, timeout=60))
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(child)
        assert (toy / "signals").read_text() == "SIGTERM\n"
    finally:
        _cleanup(parent, child)


def test_wrapper_stops_if_the_parent_is_already_gone(tmp_path):
    """The parent died between fork and prctl: the wrapper ends itself instead of running CMD."""
    marker = tmp_path / "ran"
    r = subprocess.run([sys.executable, "-m", "ctr.procs", "999999999", sys.executable, "-c",
                        f"open({str(marker)!r}, 'w')"], cwd=REPO)
    assert r.returncode == -signal.SIGTERM and not marker.exists()
    assert procs.exit_status(-signal.SIGTERM) == 143 and procs.exit_status(3) == 3


def test_exit_code_table():
    assert EXIT_CODES == {"ok": 0, "diverged": 3, "interrupted": 130}
    assert exit_code_for_status("diverged") == EXIT_DIVERGED
    assert exit_code_for_status("weird") == EXIT_FAILED and exit_code_for_status(None, default=7) == 7


# ---------------------------------------------------------------- launch_workers (torchrun)

def test_launch_workers_refuses_no_processes():
    from ctr.distributed.env import launch_workers
    for n in (0, -2):
        with pytest.raises(ValueError, match="nproc"):
            launch_workers(n, "toychild", [])


def test_launch_workers_returns_the_runs_status_not_torchruns_1(toy, monkeypatch):
    from ctr.distributed.env import launch_workers
    monkeypatch.setenv("PYTHONPATH", _env(toy)["PYTHONPATH"])
    monkeypatch.chdir(toy)
    # diverged: the worker exits 3, torchrun says 1, the fresh summary says diverged
    monkeypatch.setenv("TOY_STATUS", "diverged")
    monkeypatch.setenv("TOY_CODE", "3")
    assert launch_workers(1, "toychild", [str(toy)], run_dir=toy) == EXIT_DIVERGED
    # a summary left by an earlier launch says nothing about this one: a crash stays 1
    (toy / "summary.json").write_text(json.dumps({"status": "ok"}))
    monkeypatch.setenv("TOY_CRASH", "1")
    assert launch_workers(1, "toychild", [str(toy)], run_dir=toy) == EXIT_FAILED


LAUNCHER = """
    import sys
    from ctr.distributed.env import launch_workers
    sys.exit(launch_workers(1, "toychild", ["."], run_dir="."))
"""


def test_ctrl_c_under_torchrun_returns_130(toy):
    """Ctrl-C: torchrun passes it to its worker (in a session of its own), the worker saves and
    exits 130, torchrun says 1, the launcher returns 130 from the run's summary."""
    parent = _start(LAUNCHER, toy, TOY_SUMMARY="1")
    child = int(_wait_for(toy / "ready", parent, timeout=60))
    try:
        os.killpg(parent.pid, signal.SIGINT)
        out, err = parent.communicate(timeout=60)
        assert parent.returncode == EXIT_INTERRUPTED, err
        assert (toy / "signals").read_text() == "SIGINT\n"
        assert json.loads((toy / "summary.json").read_text())["status"] == "interrupted"
    finally:
        _cleanup(parent, child)


def test_killed_launcher_ends_torchrun_and_its_workers(toy):
    parent = _start(LAUNCHER, toy)
    child = int(_wait_for(toy / "ready", parent, timeout=60))
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(child, timeout=30), "the worker outlived its SIGKILLed launcher"
        assert (toy / "signals").read_text() == "SIGTERM\n"
    finally:
        _cleanup(parent, child)
