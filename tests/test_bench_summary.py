"""`redraft bench` alone: one summary table of inversion, generation, editing and describe."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from redraft.bench import summary
from redraft.apps.cli import main


def test_summary_rows_count_the_unet_passes(editor, tmp_path):
    result = summary.run(editor, n_inversion=1, n_generation=2, n_edit=1, methods=("negative-prompt",),
                         n_describe=2)
    rows = {(r["task"], r["method"]): r for r in result["rows"]}
    # Negative-prompt inversion + reconstruction at 50 steps: 50 + 50 passes, no backward.
    assert rows[("inversion", "negative-prompt")]["unet_passes"] == 100
    # Generation with classifier-free guidance: 2 rows per step.
    assert rows[("generation", "50 steps, guidance 7.5")]["unet_passes"] == 100
    # Editing one scene: every edit kind's inversion (N passes each) and its edits (1 + 2T rows per step).
    assert rows[("editing", "negative-prompt")]["unet_passes"] > 100
    assert ("describe", "shipped describer") not in rows  # the tiny model has no describer
    for r in result["rows"]:
        # a ratio of two timings: finite and positive (a bound on its size fails on a loaded machine)
        assert r["seconds"] > 0 and math.isfinite(r["ratio_to_floor"]) and r["ratio_to_floor"] > 0
        assert 0.0 <= r["value"] <= 1.0 or r["task"] == "inversion"
    json_path, png_path = summary.save(result, tmp_path)
    assert json.loads(json_path.read_text())["rows"] == result["rows"] and png_path.stat().st_size > 1000
    assert "negative-prompt" in summary.table(result)


def test_bench_alone_needs_no_subcommand(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(summary.run, "__defaults__", (1, 2, 1, ("negative-prompt",), 2))
    out = CliRunner().invoke(main, ["--model", str(tiny_folder), "--device", "cpu", "bench", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "summary.json").exists() and (tmp_path / "summary.png").exists()
