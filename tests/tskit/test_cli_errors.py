"""A file that is missing or is not an archive gets one line that says so, not a traceback."""
import subprocess
import sys

import pytest

from export.zoo import CONFIG_DIR

REPO = CONFIG_DIR.parent


@pytest.mark.parametrize("args, expected", [
    (["verify", "README.md"], "tskit verify: README.md is not a .mar archive"),
    (["verify", "no-such.mar"], "tskit verify: [Errno 2] No such file or directory: 'no-such.mar'"),
    (["optimize", "README.md", "--calibration", "docs"], "tskit optimize: README.md is not a .mar archive"),
])
def test_a_wrong_file_is_one_line(args, expected):
    result = subprocess.run([sys.executable, "-m", "tskit.cli", *args], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("tskit ")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
