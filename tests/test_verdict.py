"""The demos' one-line verdict reads the measured number and compares it with what the demo should reach."""
from __future__ import annotations

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("verdict", ROOT / "scripts" / "verdict.py")
verdict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verdict)


def test_a_value_at_the_threshold_is_as_intended(tmp_path, capsys):
    (tmp_path / "summary.csv").write_text("sequences,spearman\n8,0.9\n")
    assert verdict.main([str(tmp_path / "summary.csv"), "spearman", "--at_least", "0.9", "--what", "Spearman"]) == 0
    assert capsys.readouterr().out.startswith("verdict: working as intended: Spearman 0.900")


def test_a_low_or_missing_value_is_not(tmp_path, capsys):
    (tmp_path / "dice.json").write_text('{"layout_dice": 0.42}')
    assert verdict.main([str(tmp_path / "dice.json"), "layout_dice", "--at_least", "0.8", "--what", "Dice"]) == 1
    assert "NOT as intended: Dice 0.420, expected at least 0.8" in capsys.readouterr().out
    assert verdict.main([str(tmp_path / "none.json"), "layout_dice", "--at_least", "0.8", "--what", "Dice"]) == 1
    assert "could not read the result" in capsys.readouterr().out
    (tmp_path / "nan.csv").write_text("spearman\nnan\n")
    assert verdict.main([str(tmp_path / "nan.csv"), "spearman", "--at_least", "0.9", "--what", "S"]) == 1
