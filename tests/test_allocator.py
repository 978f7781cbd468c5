"""ctr/allocator.py: which allocator is chosen, how the environment is merged, the one re-exec
of an entry point, and that child processes (ctr-train's, run_child's) start under it.

Runs where tcmalloc is installed and where it is not: the tcmalloc assertions skip without
it, the glibc fallback is tested by forcing it (``CTR_ALLOCATOR=glibc``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctr import allocator
from ctr.allocator import (
    GLIBC,
    GLIBC_SETTINGS,
    MARKER,
    SYSTEM,
    TCMALLOC,
    AllocatorError,
    plan,
)

ROOT = Path(__file__).resolve().parents[1]
LIB = "/opt/x/libtcmalloc_minimal.so.4"
TUNED = ":".join(f"{k}={v}" for k, v in GLIBC_SETTINGS.items())
THP = {"THP_MEM_ALLOC_ENABLE": "1"}   # torch's 2 MB pages, with either malloc
TCMALLOC_HERE = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC_HERE is None, reason=f"{allocator.TCMALLOC_LIBRARY} "
                                    "is not installed here (apt-get install libtcmalloc-minimal4)")
needs_glibc = pytest.mark.skipif(allocator.glibc_version() is None, reason="not a glibc system")


def found():
    return LIB


def absent():
    return None


# --- the decision ---------------------------------------------------------------------------

def test_auto_takes_tcmalloc_where_found():
    p = plan({}, find=found, glibc=True)
    assert p.mode == TCMALLOC and p.library == LIB
    assert p.changes == {"LD_PRELOAD": LIB, "TCMALLOC_RELEASE_RATE": "0", "THP_MEM_ALLOC_ENABLE": "1"}


def test_auto_falls_back_to_glibc_tunables_then_to_system():
    assert plan({}, find=absent, glibc=True) == allocator.Plan(GLIBC, {"GLIBC_TUNABLES": TUNED, **THP})
    assert plan({}, find=absent, glibc=False) == allocator.Plan(SYSTEM)
    assert plan({"CTR_ALLOCATOR": "auto"}, find=absent, glibc=True).mode == GLIBC


def test_existing_ld_preload_is_kept_first_and_existing_values_win():
    p = plan({"LD_PRELOAD": "/a/libfoo.so:/b/libbar.so", "TCMALLOC_RELEASE_RATE": "2",
              "THP_MEM_ALLOC_ENABLE": "0"}, find=found, glibc=True)
    assert p.changes == {"LD_PRELOAD": f"/a/libfoo.so /b/libbar.so {LIB}"}
    # a tcmalloc already preloaded (any path): nothing to change, so no restart
    assert plan({"LD_PRELOAD": "/usr/lib64/libtcmalloc.so.4", "TCMALLOC_RELEASE_RATE": "0", **THP},
                find=found, glibc=True).changes == {}


def test_existing_glibc_tunables_are_merged_and_the_users_values_win():
    p = plan({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=65536"},
             find=absent, glibc=True)
    assert p.changes == {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=65536:"
                                           "glibc.malloc.trim_threshold=68719476736", **THP}
    assert plan({"GLIBC_TUNABLES": TUNED}, find=absent, glibc=True).changes == THP
    assert plan({"GLIBC_TUNABLES": TUNED, **THP}, find=absent, glibc=True).changes == {}


def test_the_plan_is_a_fixed_point():
    """After applying its changes, plan() asks for none: the re-exec cannot repeat."""
    for env, find in (({"LD_PRELOAD": "/x/liby.so"}, found), ({"GLIBC_TUNABLES": "a.b=1"}, absent),
                      ({"CTR_ALLOCATOR": "glibc", "LD_PRELOAD": f"/x/liby.so {LIB}"}, found)):
        first = plan(env, find=find, glibc=True)
        assert first.changes and plan({**env, **first.changes}, find=find, glibc=True).changes == {}


def test_overrides():
    env = {"LD_PRELOAD": f"/x/liby.so {LIB}", "GLIBC_TUNABLES": "a.b=1"}
    # glibc asked for: tunables set, an inherited tcmalloc dropped, other preloads kept
    assert plan({**env, "CTR_ALLOCATOR": "glibc"}, find=found, glibc=True).changes == {
        "LD_PRELOAD": "/x/liby.so", "GLIBC_TUNABLES": f"a.b=1:{TUNED}", **THP}
    assert plan({**env, "CTR_ALLOCATOR": " System "}, find=found, glibc=True) == allocator.Plan(SYSTEM)
    assert plan({"CTR_ALLOCATOR": "TCMALLOC"}, find=found, glibc=False).mode == TCMALLOC


@pytest.mark.parametrize("value, words", [
    ("jemalloc", ["CTR_ALLOCATOR='jemalloc'", "auto, tcmalloc, glibc, system"]),
    ("tcmalloc", ["CTR_ALLOCATOR=tcmalloc", "libtcmalloc_minimal.so.4", "apt-get install libtcmalloc-minimal4",
                  "CTR_ALLOCATOR=glibc"]),
])
def test_a_value_that_cannot_be_honoured_is_a_clear_error(value, words):
    with pytest.raises(AllocatorError) as e:
        plan({"CTR_ALLOCATOR": value}, find=absent, glibc=True)
    assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(AllocatorError, match="not glibc"):
        plan({"CTR_ALLOCATOR": "glibc"}, find=absent, glibc=False)


def test_install_only_where_missing_and_root(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd[1:])
        return subprocess.CompletedProcess(cmd, 100 if cmd[1:2] == ["install"] and len(calls) == 1 else 0)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
    assert allocator.install_tcmalloc(fake_run) == "tcmalloc: /lib/libtcmalloc_minimal.so.4" and not calls
    monkeypatch.setattr(allocator, "find_tcmalloc", absent)
    monkeypatch.setattr(allocator.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "not root" in allocator.install_tcmalloc(fake_run) and not calls
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    # a fresh image has no package lists: install fails, update, install again; still absent
    assert "glibc" in allocator.install_tcmalloc(fake_run)
    assert calls == [["install", "-y", "-q", "libtcmalloc-minimal4"], ["update", "-q"],
                     ["install", "-y", "-q", "libtcmalloc-minimal4"]]


# --- processes ------------------------------------------------------------------------------

def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any allocator set-up (the tests' own included), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "TCMALLOC_RELEASE_RATE", "THP_MEM_ALLOC_ENABLE", MARKER, allocator.ENV)}
    preload = [p for p in env.pop("LD_PRELOAD", "").replace(":", " ").split() if "tcmalloc" not in p]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


ENTRY = '''
import json, os, sys
from ctr import allocator
with open(sys.argv[1], "a") as f:     # one line per start of this program
    f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\\n")

def main():
    allocator.ensure(main)
    print(json.dumps({"pid": os.getpid(), "active": allocator.active_allocator(),
                      "marker": os.environ.get(allocator.MARKER), "argv": sys.argv[1:]}))
    return 7

if __name__ == "__main__":
    sys.exit(main())
'''


def _run_entry(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict, list[dict]]:
    script, starts = tmp_path / "entry.py", tmp_path / "starts.jsonl"
    script.write_text(ENTRY)
    starts.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(script), str(starts), "two words", "--x=1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 7, err      # the program's own exit code, through the exec
    return proc, json.loads(out), [json.loads(line) for line in starts.read_text().splitlines()]


@needs_glibc
def test_an_entry_point_restarts_once_under_the_forced_glibc_fallback(tmp_path):
    proc, report, starts = _run_entry(tmp_path, _clean_env(CTR_ALLOCATOR="glibc"))
    assert len(starts) == 2                                     # started, re-executed once, no loop
    assert {s["pid"] for s in starts} == {report["pid"], proc.pid}   # same pid: signals reach it
    assert all(s["argv"][1:] == ["two words", "--x=1"] for s in starts) and report["argv"][1:] == ["two words", "--x=1"]
    assert report["active"] == GLIBC and report["marker"] == str(proc.pid)


@needs_tcmalloc
def test_an_entry_point_restarts_once_under_tcmalloc(tmp_path):
    proc, report, starts = _run_entry(tmp_path, _clean_env())   # auto: tcmalloc, it is installed
    assert len(starts) == 2 and report["active"] == TCMALLOC and report["pid"] == proc.pid


def test_nothing_to_set_means_no_restart(tmp_path):
    _, report, starts = _run_entry(tmp_path, _clean_env(CTR_ALLOCATOR="system"))
    assert len(starts) == 1 and report["marker"] is None and report["active"] == SYSTEM


def test_an_invalid_value_stops_the_entry_point_with_the_reason(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ctr.cli.eval", "--run", str(tmp_path)], capture_output=True,
                       text=True, env=_clean_env(CTR_ALLOCATOR="fast"), timeout=120, check=False)
    assert r.returncode == 2 and "CTR_ALLOCATOR='fast': choose one of" in r.stderr, r.stderr


def test_an_in_process_call_never_restarts(monkeypatch):
    monkeypatch.delenv(MARKER, raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed the test process"))
    allocator.ensure(test_an_in_process_call_never_restarts)           # not __main__'s main
    allocator.ensure(test_an_in_process_call_never_restarts, argv=[])  # explicit arguments


SITE = '''
import json, os, sys
from ctr import allocator
with open(os.environ["CTR_TEST_STARTS"], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.orig_argv[1:4],
                        "active": allocator.active_allocator()}) + "\\n")
'''


LAUNCHER = '''
import sys
from ctr import allocator
from ctr.procs import run_child

def main():
    allocator.ensure(main)
    return run_child([sys.executable, "-c", "pass"])

if __name__ == "__main__":
    sys.exit(main())
'''


def test_ctr_train_and_its_children_run_under_the_chosen_allocator(tmp_path):
    """Every Python process records its allocator at start (a sitecustomize): the console
    script ``ctr-train`` first (not yet), then re-executed (chosen), then a child it starts
    with ctr.procs.run_child, the launcher of torchrun workers and sweep cells, inherits it."""
    expected = plan(_clean_env()).mode
    site, starts = tmp_path / "site", tmp_path / "starts.jsonl"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    env = _clean_env(CTR_TEST_STARTS=str(starts))
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    script = Path(sys.executable).with_name("ctr-train")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "ctr.cli.train"]
    r = subprocess.run([*cmd, "--help"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "usage: ctr-train" in r.stdout, r.stderr
    first, again = [json.loads(line) for line in starts.read_text().splitlines()]
    assert first["pid"] == again["pid"] and first["active"] == SYSTEM and again["active"] == expected

    starts.unlink()
    launcher = tmp_path / "launcher.py"   # ctr-train --nproc / ctr-sweep's way to start a child
    launcher.write_text(LAUNCHER)
    r = subprocess.run([sys.executable, str(launcher)], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    seen = [json.loads(line) for line in starts.read_text().splitlines()]
    # the launcher, re-executed; ctr.procs' wrapper, which execs the child (one pid)
    launched = [s for s in seen if s["pid"] != seen[0]["pid"]]
    assert [s["active"] for s in seen] == [SYSTEM, expected, expected, expected], seen
    assert len({s["pid"] for s in launched}) == 1 and launched[0]["ppid"] == seen[0]["pid"]


def test_torchrun_and_sweep_cells_get_this_environment(monkeypatch, tmp_path):
    """launch_workers (torchrun) and the sweep's cells hand run_child os.environ itself, so a
    worker or a cell starts with the allocator its launcher runs under."""
    from ctr.distributed import env as dist_env
    from ctr.sweep import runner
    from ctr.sweep.spec import Cell, SweepSpec
    got = []
    monkeypatch.setenv("GLIBC_TUNABLES", TUNED)
    monkeypatch.setenv("LD_PRELOAD", "/x/libmark.so")
    for mod in (dist_env, runner):
        monkeypatch.setattr(mod, "run_child", lambda cmd, **kw: got.append(kw["env"]) or 0)
    dist_env.launch_workers(2, "ctr.cli.train", ["--help"])
    runner.run_cell(Cell("deepfm", 1024, "none", 0), SweepSpec.from_preset("quick"), "data",
                    tmp_path / "cell", threads=1)
    assert len(got) == 2
    assert all(e["GLIBC_TUNABLES"] == TUNED and e["LD_PRELOAD"] == "/x/libmark.so" for e in got)


def test_active_allocator_reports_this_process():
    name = allocator.active_allocator()
    in_maps = "tcmalloc" in Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else False
    assert (name == TCMALLOC) == in_maps
    assert allocator.describe_active().startswith(name if name != SYSTEM else ("glibc", "system"))


def test_the_command_line_module(tmp_path):
    def run(*args, **extra):
        return subprocess.run([sys.executable, "-m", "ctr.allocator", *args], capture_output=True, text=True,
                              env=_clean_env(**extra), timeout=60, check=False)
    r = run("env", CTR_ALLOCATOR="system")
    assert r.returncode == 0 and r.stdout.strip() == ""
    r = run("run", "--", sys.executable, "-c", "from ctr.allocator import *; print(active_allocator())",
            CTR_ALLOCATOR="glibc" if allocator.glibc_version() else "system")
    assert r.returncode == 0 and r.stdout.strip() == (GLIBC if allocator.glibc_version() else SYSTEM), r.stderr
    r = run("show", CTR_ALLOCATOR="nope")
    assert r.returncode == 2 and "CTR_ALLOCATOR='nope'" in r.stderr
    assert run("bogus").returncode == 2 and run("run", "--").returncode == 2
