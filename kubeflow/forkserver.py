"""One warm interpreter for kubeflow.launcher: it imports TensorFlow, TFX and Beam once, then runs each container's
`python -m MODULE ARGS...` in a child forked from it.

Every executed task otherwise starts a fresh interpreter that spends 10-25 s importing the same libraries before its
executor runs (a pod pays that too, once per task): over the 12-15 processes of an executed spec that is most of its
wall time. A forked child is still a process of its own (its own state, log, working directory and exit code), and
it runs the container's entry point module as `python -m` does (runpy, `__main__`, sys.argv, sys.path[0] the
working directory); only the import of the preloaded third-party libraries is skipped. This project's modules are
never preloaded: each child imports the executor classes and module files the spec names, as a pod does.

    python kubeflow/forkserver.py    # started by kubeflow.launcher.ForkServer, in the tasks' environment

Protocol: one JSON request a line on stdin ({"argv", "cwd", "log"}), one JSON answer a line ({"returncode"}).
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import subprocess
import sys
import traceback
from typing import IO, Mapping, Optional, Sequence

# What every executor of the spec imports first; the project's own modules are left to each child.
PRELOADED = ("tensorflow", "tensorflow_text", "apache_beam", "tfx.v1", "tensorflow_transform",
             "tensorflow_data_validation", "tensorflow_model_analysis")


def is_python_module_command(argv: Sequence[str]) -> bool:
    """Commands the fork server runs: `python -m MODULE ...`, as every TFX container command is."""
    return len(argv) >= 3 and argv[0] == "python" and argv[1] == "-m"


def exit_code(exit: SystemExit) -> int:
    """The status `python` exits with for a SystemExit (a non-integer code is printed and exits 1)."""
    if exit.code is None:
        return 0
    if isinstance(exit.code, int):
        return exit.code & 0xFF
    print(exit.code, file=sys.stderr)
    return 1


def run_child(argv: Sequence[str], cwd: str, log_path: str) -> None:
    """In the forked child: `argv` (python -m MODULE ARGS) in `cwd`, stdout and stderr appended to `log_path`."""
    os.chdir(cwd)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    sys.argv = [argv[2], *argv[3:]]
    sys.path[0] = cwd  # `python -m` puts the working directory first
    code = 0
    try:
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit_code(exit)
    except BaseException:  # noqa: B036  (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """Preloads, then forks one child per request line until stdin closes."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the imports print goes to stderr, not into the answers
    for name in PRELOADED:
        __import__(name)
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            answers.close()
            run_child(request["argv"], request["cwd"], request["log"])
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


class ForkServer:
    """The launcher's side: starts the warm interpreter in the tasks' environment and asks it to run commands."""

    def __init__(self, env: Mapping[str, str], log_path: str):
        self._log: IO = open(log_path, "ab")
        self._process = subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=dict(env),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._read_answer()

    def _read_answer(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited with {self._process.wait()}; its log: {self._log.name}")
        return json.loads(line)

    def run(self, argv: Sequence[str], cwd: str, log_path: str) -> int:
        """Runs `python -m MODULE ARGS` in a forked child; returns its exit code (negative: killed by that signal)."""
        self._process.stdin.write(json.dumps({"argv": list(argv), "cwd": cwd, "log": log_path}) + "\n")
        self._process.stdin.flush()
        return self._read_answer()["returncode"]

    def close(self, timeout: Optional[float] = 60) -> None:
        self._process.stdin.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._log.close()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    serve()
