"""setup.sh's pip wrapper: the notices about package locations a machine's pip configuration names but does not
hold are left out; pip's other lines, its stdout and its exit status survive (under setup.sh's `set -euo
pipefail`). Runs the two bash functions of setup.sh with a stand-in for pip, not setup.sh itself."""
import os
import re
import stat
import subprocess
from typing import Tuple

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTICES = ("WARNING: Location 'file:///opt/pypi/simple/six/' is ignored: it is neither a file nor a directory.\n"
           "WARNING: Location 'file:///opt/pypi-more/simple/six/' is ignored: it is neither a file nor a directory.\n")
ERRORS = ("ERROR: Could not find a version that satisfies the requirement six==99.0 (from versions: 1.16.0)\n"
          "ERROR: No matching distribution found for six==99.0\n")


def setup_functions() -> str:
    """The definitions of without_location_notices and pip_install, as setup.sh has them."""
    with open(os.path.join(REPO_ROOT, "setup.sh")) as f:
        source = f.read()
    functions = [re.search(rf"^{name}\(\) {{\n.*?^}}\n", source, re.M | re.S) for name in
                 ("without_location_notices", "pip_install")]
    assert all(functions), "setup.sh no longer defines without_location_notices and pip_install"
    return "".join(f.group(0) for f in functions)


def run_pip_install(tmp_path, stdout: str, stderr: str, status: int) -> Tuple[int, str, str]:
    """pip_install under `set -euo pipefail`, with a stand-in pip that prints `stdout`, `stderr` and exits `status`."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    python.write_text(f"#!/bin/sh\ncat '{tmp_path}/out'\ncat '{tmp_path}/err' >&2\nexit {status}\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    script = (f"set -euo pipefail\nVENV='{tmp_path}/venv'\n{setup_functions()}"
              "pip_install --no-deps -r requirements.lock\necho 'setup.sh: next step'\n")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def test_location_notices_are_left_out_and_a_clean_install_goes_on(tmp_path) -> None:
    # Every stderr line filtered out: the filter must not fail the way `grep -v` would (exit 1 on no output).
    status, stdout, stderr = run_pip_install(tmp_path, "Successfully installed six-1.16.0\n", NOTICES, 0)
    assert (status, stdout, stderr) == (0, "Successfully installed six-1.16.0\nsetup.sh: next step\n", "")


@pytest.mark.parametrize("pip_status", [1, 2])
def test_pip_errors_and_exit_status_survive(tmp_path, pip_status: int) -> None:
    warning = "WARNING: The candidate selected for download or install is a yanked version: 'six' candidate\n"
    status, stdout, stderr = run_pip_install(tmp_path, "", NOTICES + warning + ERRORS + "last line, no newline",
                                             pip_status)
    assert (status, stdout) == (pip_status, "")  # setup.sh stopped at the failing pip, with its status
    assert stderr == warning + ERRORS + "last line, no newline\n"
