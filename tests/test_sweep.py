"""ctr-sweep on a tiny dataset: report, results and plot are written; a re-run does nothing new."""

import json

from ctr.cli import sweep as sweep_cli


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
    assert "| 4K |" in report and "cowclip" in report
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
    from ctr.sweep.runner import PRESET_DIR, SweepSpec

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
