"""An interrupted command that owns its process ends it at once, after its clean-up.

The interpreter's shutdown after an interrupt that landed while PyTorch was at work aborted the C++ runtime now and
then (exit 134, "terminate called without an active exception"; 1 in 20-25 SIGTERMs sent as a small run began, and
once in a CI run of ``test_cli.py::test_sigterm_cleans_up_as_ctrl_c_does``).
"""

import subprocess
import sys


def _run(code: str):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_process_the_command_owns_ends_with_the_interrupts_status():
    p = _run(
        "from xanestrack import cli; cli._STATE['process'] = True; print('before', flush=True); "
        "cli._end_interrupted_process(130); print('not reached')"
    )
    assert p.returncode == 130 and p.stdout == "before\n", (p.returncode, p.stdout, p.stderr)


def test_app_called_from_python_is_not_ended():
    """Control: without main() (app() from Python, a test's CliRunner) the caller's process goes on."""
    p = _run("from xanestrack import cli; cli._end_interrupted_process(130); print('goes on')")
    assert p.returncode == 0 and p.stdout == "goes on\n", (p.returncode, p.stdout, p.stderr)
