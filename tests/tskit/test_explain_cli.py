"""`tskit explain`: an archive's own handler explains files in-process and writes answers and heatmaps."""
import json
import subprocess
import sys

from PIL import Image


def test_explain_writes_answers_and_heatmaps(default_mar, photos, tmp_path):
    cmd = [sys.executable, "-m", "tskit.cli", "explain", str(default_mar), str(photos["chelsea.png"]),
           str(photos["coffee.png"]), "--out", str(tmp_path), "--set", "explain_steps=4"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 explanation(s) in one batch" in result.stdout and "4 steps" in result.stdout
    assert json.loads((tmp_path / "coffee.json").read_text())["target"] == "espresso"
    assert Image.open(tmp_path / "chelsea_heatmap.png").size == (224, 224)
