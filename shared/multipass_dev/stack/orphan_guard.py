"""``python -I -S orphan_guard.py PARENT_PID COMMAND...``: become COMMAND, to be SIGTERMed if PARENT dies.

The supervisor starts every child through this script instead of a ``preexec_fn``: Python code run
between ``fork`` and ``exec`` in a process with threads (the supervisor's monitor thread probes health
while later groups start) may crash or deadlock the child, which then dies before it ever logs. Here a
fresh single-threaded interpreter (standard library only, no ``site``) asks Linux for
``PR_SET_PDEATHSIG`` and replaces itself with the command, keeping its pid, so the setting applies to
the command. Elsewhere, or if ``prctl`` is unavailable, it only execs the command.
"""

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.stderr.write("usage: orphan_guard.py PARENT_PID COMMAND [ARG...]\n")
        sys.exit(2)
    parent, command = int(argv[1]), argv[2:]
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the request took effect
            sys.exit(128 + int(signal.SIGTERM))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
