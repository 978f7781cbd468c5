"""ctr-sweep on a tiny dataset: report, results and plot are written; a re-run does nothing new.
Bad presets and flags are messages; one sweep per directory; Ctrl-C, SIGKILL and a signal between
cells (real processes, signalled at known points) leave no cell running and none started twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctr.cli import sweep as sweep_cli
from ctr.fsutil import DirLock
from ctr.sweep import runner
from ctr.sweep import spec as spec_mod
from ctr.sweep import report as report_mod
from ctr.sweep.report import render_markdown


def test_tiny_sweep_and_rerun(small_dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["--preset", "quick", "--model", "deepfm", "--batches", "1k,4k", "--scaling", "none,cowclip",
            "--epochs", "1", "--data", str(small_dataset), "--out", str(out),
            "--train-args", "--mlp 32 --max-steps 3 --eval-batch 4096", "--jobs", "2"]
    assert sweep_cli.main(args) == 0
    first = capsys.readouterr().out
    assert "4 to run" in first and "[4/4]" in first
    results = json.loads((out / "results.json").read_text())
    cells = {(r["batch"], r["rule"]): r for r in results["results"]}
    assert set(cells) == {(1024, "none"), (1024, "cowclip"), (4096, "none"), (4096, "cowclip")}
    assert all(r["status"] == "ok" and 0 <= r["test_auc"] <= 1 for r in cells.values())
    assert cells[(4096, "cowclip")]["hparams"]["l2"] > cells[(4096, "none")]["hparams"]["l2"]
    report = (out / "report.md").read_text()
    assert "| 4K |" in report and "cowclip" in report and "table update dense;" in report
    png = (out / "auc_vs_batch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert sweep_cli.main(args) == 0
    again = capsys.readouterr().out
    assert "0 to run" in again
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}


def test_unknown_preset_is_named(capsys):
    assert sweep_cli.main(["--preset", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_presets_keep_the_papers_ratio_and_rules():
    """Every preset loads; cpu and paper span the paper's 128x with all four rules, from their base."""
    from ctr.optim.scaling import RULES
    from ctr.sweep.spec import PRESET_DIR, SweepSpec

    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"quick", "cpu", "paper"} <= set(names)
    for name in names:
        spec = SweepSpec.from_preset(name)
        assert spec.batches == sorted(spec.batches) and spec.epochs >= 1
    for name in ("cpu", "paper"):
        spec = SweepSpec.from_preset(name)
        assert max(spec.batches) == 128 * min(spec.batches)
        assert set(spec.rules) == set(RULES)
        assert spec.base_batch in (None, min(spec.batches))


# ---------------------------------------------------------------- reliability

QUICK = ["--preset", "quick", "--model", "deepfm", "--epochs", "1"]


def _args(data, out, batches="1k,4k", rules="none,cowclip",
          train="--mlp 32 --max-steps 3 --eval-batch 4096"):
    return [*QUICK, "--batches", batches, "--scaling", rules, "--data", str(data), "--out", str(out),
            "--train-args", train]


@pytest.mark.parametrize("text, says", [
    (None, "is not a file"),
    ("models: [deepfm\n", "not valid YAML"),
    ("- deepfm\n- dcn\n", "is a mapping"),
    ("epochs: two\n", "epochs must be a whole number"),
    ("batches: {a: 1}\n", "batches must be a non-empty list"),
    ("batches: [1k, lots]\n", "invalid batch size 'lots'"),
    ("rules: [cowclip, magic]\n", "unknown scaling rule"),
    ("nproc: 0\n", "nproc must be a whole number >= 1"),
    ("synthetic: {rows: many}\n", "synthetic.rows must be a whole number"),
    ("colour: blue\n", "unknown keys ['colour']"),
])
def test_bad_preset_is_a_message_naming_the_file(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    assert sweep_cli.main(["--preset", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and says in err and "Traceback" not in err


@pytest.mark.parametrize("flag", [["--nproc", "0"], ["--nproc", "-1"], ["--jobs", "0"], ["--epochs", "0"]])
def test_counts_below_one_are_refused(tmp_path, capsys, flag):
    assert sweep_cli.main([*QUICK, "--out", str(tmp_path / "s"), *flag]) == 2
    assert f"{flag[0][2:]} must be a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_second_sweep_on_the_same_out_is_refused(small_dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    with DirLock(out, what="sweep directory"):   # another ctr-sweep holds it
        assert sweep_cli.main(_args(small_dataset, out)) == 2
    err = capsys.readouterr().err
    assert "sweep directory is in use by another process" in err
    assert not (out / "runs").exists() and not (out / "spec.json").exists()


def test_a_cell_locked_by_a_live_run_is_not_started(small_dataset, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = spec_mod.SweepSpec.from_preset("quick", batches=["1k", "4k"], rules=["none"], out=str(out))
    locks = [DirLock(out / "runs" / c.name, what="run directory").acquire() for c in spec_mod.cells(spec)]
    try:
        assert sweep_cli.main(_args(small_dataset, out, rules="none")) == 1
    finally:
        for lock in locks:
            lock.release()
    text = capsys.readouterr().out
    assert text.count("skipped:") == 2 and "run directory is in use" in text
    assert not list(out.glob("runs/*/train.log"))


def test_repeated_values_make_one_cell_and_runs_are_counted_once(tmp_path):
    """1k and 1024 are one batch; sqrt/linear at the base batch share the none run, and a
    failed shared run is one unfinished run, not three."""
    spec = spec_mod.SweepSpec.from_preset("quick", batches=["1k", "1024", "4k"], seeds=[0, 0],
                                        rules=["none", "sqrt", "none"], base_batch="1k", out=str(tmp_path))
    assert spec.batches == [1024, 4096] and spec.rules == ["none", "sqrt"] and spec.seeds == [0]
    all_cells = spec_mod.cells(spec)
    assert len(all_cells) == len(set(all_cells)) == 4
    runs = spec_mod.run_cells(spec)
    assert [c.name for c in runs] == ["deepfm-1K-none-s0", "deepfm-4K-none-s0", "deepfm-4K-sqrt-s0"]
    run = tmp_path / "runs" / "deepfm-1K-none-s0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "ok"}))
    assert runner.tally(spec, tmp_path) == {"ok": ["deepfm-1K-none-s0"],
                                            "pending": ["deepfm-4K-none-s0", "deepfm-4K-sqrt-s0"]}


def _result(batch, rule, auc):
    return {"model": "deepfm", "batch": batch, "rule": rule, "seed": 0, "cell": f"{batch}-{rule}",
            "status": "ok", "test_auc": auc, "test_logloss": 0.5, "train_seconds": 60,
            "samples_per_second": 1000}


def test_report_says_when_the_base_batch_is_absent():
    results = [_result(1024, "cowclip", 0.70), _result(4096, "cowclip", 0.69)]
    spec = spec_mod.SweepSpec(batches=[1024, 4096], rules=["cowclip"], base_batch=64).normalised()
    md = render_markdown(spec, results, "data")
    assert "the base batch 64 is absent" in md and "minus" not in md
    spec = spec_mod.SweepSpec(batches=[1024], rules=["cowclip"]).normalised()
    md = render_markdown(spec, results[:1], "data")
    assert "1K is this sweep's only batch" in md and "minus" not in md
    spec = spec_mod.SweepSpec(batches=[1024, 4096], rules=["cowclip"], base_batch=1024).normalised()
    assert "cowclip: AUC at 4K minus AUC at 1K = -0.0100" in render_markdown(spec, results, "data")


def test_interval_seeds_add_base_and_top_cells_of_every_rule():
    spec = spec_mod.SweepSpec(batches=[8, 64, 1024], rules=["none", "cowclip"], base_batch=8,
                              interval_seeds=[1, 2]).normalised()
    extra = [c for c in spec_mod.cells(spec) if c.seed != 0]
    assert sorted((c.batch, c.rule, c.seed) for c in extra) == sorted(
        (b, r, s) for b in (8, 1024) for r in ("none", "cowclip") for s in (1, 2))


def test_report_gives_top_minus_base_with_a_95_interval():
    """Welch's interval from the seeds at each batch, checked against scipy's own Welch test
    (the interval excludes a difference d exactly when the test of d has p < 0.05)."""
    from scipy import stats
    base = {"cowclip": [0.770, 0.772, 0.771, 0.769, 0.773], "none": [0.770, 0.771, 0.772, 0.770, 0.769]}
    top = {"cowclip": [0.771, 0.770, 0.773, 0.772, 0.771], "none": [0.751, 0.752, 0.750, 0.753, 0.749]}
    results = [dict(_result(b, rule, auc), seed=s) for rule in base
               for b, vals in ((8, base[rule]), (1024, top[rule])) for s, auc in enumerate(vals)]
    spec = spec_mod.SweepSpec(batches=[8, 1024], rules=["none", "cowclip"], base_batch=8,
                              interval_seeds=[1, 2, 3, 4]).normalised()
    md = render_markdown(spec, results, "data")
    assert "cowclip: AUC at 1K minus AUC at 8 = +0.0004, 95% interval [" in md and ": holds" in md
    assert "none: AUC at 1K minus AUC at 8 = -0.0194" in md and ": loses" in md
    iv = report_mod.change_interval(results, "deepfm", "cowclip", 8, 1024)
    for edge in (iv["low"], iv["high"]):   # each edge is where Welch's test of that shift has p = 0.05
        shifted = [a - edge for a in top["cowclip"]]
        assert stats.ttest_ind(shifted, base["cowclip"], equal_var=False).pvalue == pytest.approx(0.05, abs=1e-6)
    assert report_mod.change_interval(results[:1], "deepfm", "none", 8, 1024) is None   # one seed
    assert iv["seeds_base"] == iv["seeds_top"] == 5


# --- the sweep as a process: a Ctrl-C, a SIGKILL, a signal between cells

def _start_sweep(args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctr.cli.sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **env})


def _cell_process(out: Path, sweep: subprocess.Popen, timeout: float = 60) -> int:
    """The pid of a running cell (its command names the run directory under ``out``)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and int(p.name) != sweep.pid:
                try:
                    cmd = (p / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"ctr.cli.train" in cmd and str(out / "runs").encode() in b" ".join(cmd):
                    return int(p.name)
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)
    pytest.fail("no cell process started")


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    """No live (non-zombie) process is left in process group ``pgid``."""
    def members() -> list[str]:
        alive = []
        for p in Path("/proc").iterdir():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                alive.append(p.name)
        return alive
    end = time.monotonic() + timeout
    while members():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


LONG = "--mlp 32 --eval-batch 4096"   # with --epochs 100: a cell that runs for minutes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killed_sweep_ends_its_running_cell(small_dataset, tmp_path):
    out = tmp_path / "sweep"
    args = [*_args(small_dataset, out, batches="64", rules="none", train=LONG), "--epochs", "100"]
    sweep = _start_sweep(args)
    try:
        _cell_process(out, sweep)
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        assert _group_gone(sweep.pid), "a cell outlived its SIGKILLed sweep"
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_of_a_sweep_waits_for_its_cells_and_says_how_to_resume(small_dataset, tmp_path):
    """Ctrl-C once the first cell has trained an epoch: it saves a checkpoint and exits 130, the
    sweep waits for it, starts nothing new, and says what finished and how to resume."""
    out = tmp_path / "sweep"
    args = [*_args(small_dataset, out, batches="64,1k", rules="none", train=LONG), "--epochs", "100"]
    sweep = _start_sweep(args)
    try:
        cell = _cell_process(out, sweep)
        metrics = out / "runs" / "deepfm-64-none-s0" / "metrics.jsonl"
        end = time.monotonic() + 60
        while not (metrics.is_file() and metrics.read_text()) and time.monotonic() < end:
            time.sleep(0.05)
        os.killpg(sweep.pid, signal.SIGINT)             # a terminal's Ctrl-C: the whole group
        stdout, err = sweep.communicate(timeout=60)
        assert sweep.returncode == 130, err
        assert "Traceback" not in err and "stopped by SIGINT; no cell is running" in err
        assert "0 of 2 runs done (0 in this session), 1 interrupted" in err
        assert "0 failed, 1 not started" in err
        assert "Resume with: ctr-sweep " in err and str(out) in err
        assert _group_gone(sweep.pid, timeout=1), f"cell {cell} still running"
        run = out / "runs" / "deepfm-64-none-s0"
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
        assert (run / "checkpoint" / "latest.json").is_file()
        assert not (out / "runs" / "deepfm-1K-none-s0").exists()
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_signal_between_cells_starts_nothing_new(small_dataset, tmp_path):
    """SIGINT to the sweep alone, right after its first cell (fault point): the second cell is
    never started, the message says what finished, and the re-run command is given."""
    out = tmp_path / "sweep"
    sweep = _start_sweep(_args(small_dataset, out, rules="none"),
                         CTR_FAULT_AT="sweep.cell_done", CTR_FAULT_SIGNAL="INT")
    stdout, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    assert "1 of 2 runs done (1 in this session), 0 interrupted (they continue from their checkpoint), " \
           "0 failed, 1 not started" in err and "Traceback" not in err
    status = {r["batch"]: r["status"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert status == {1024: "ok", 4096: "pending"}
    assert not (out / "runs" / "deepfm-4K-none-s0").exists()


def test_train_args_on_the_command_line_add_to_the_presets():
    """``--train-args '--update sparse'`` must not drop the preset's own flags (its r and ζ keep
    the clip level of the scaled-down ladder)."""
    from ctr.sweep.spec import SweepSpec
    preset = SweepSpec.from_preset("cpu").train_args
    assert "--r" in preset
    spec = SweepSpec.from_preset("cpu", more_train_args=["--update", "sparse"])
    assert spec.train_args == [*preset, "--update", "sparse"]
    assert SweepSpec.from_preset("cpu", train_args=["--mlp", "8"]).train_args == ["--mlp", "8"]


def test_a_presets_synthetic_knobs_reach_the_generator(tmp_path, monkeypatch):
    from ctr.sweep.spec import SweepSpec
    spec = SweepSpec.from_preset("cpu-large")
    assert spec.synthetic["vocab_scale"] == 100 and spec.synthetic["zipf"] == 0.5
    seen = {}
    monkeypatch.setattr("ctr.data.synth.resolve_dataset", lambda data, **kw: seen.update(kw) or "ds")
    assert runner.resolve_data(spec) == "ds"
    assert seen == {"rows": 1_500_000, "seed": 0, "model": {"vocab_scale": 100.0, "zipf": 0.5}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic: {rows: 1000, alpha: 2}\n")
    with pytest.raises(ValueError, match="alpha"):
        SweepSpec.from_preset(str(bad))
