"""Run a service module under cProfile in every thread (the bench's ``--profile`` for stack processes).

``python -m multipass_bench.profile_service OUT.prof -m MODULE [ARGS...]`` runs ``MODULE`` as
``__main__`` with a profiler enabled in the main thread and in every thread started afterwards (the
diffusion worker runs the engine on an executor thread, which plain ``python -m cProfile`` does not
see), and writes the merged statistics to ``OUT.prof`` when the module exits (SIGTERM makes the
services return from main).

Each thread's profile counts that thread's CPU time (``time.thread_time``), not wall time: a service's
event loop spends most of its wall time waiting in ``select``, and a wall clock also charges a function
for the time the machine ran other processes (on 2 shared cores a loopback ``send`` showed 270 us that
way), which hid where a service's CPU goes.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
import time

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_in_thread(*_args) -> None:
    """The first profile event of a new thread: replace this hook with a cProfile of the thread."""
    profile = cpu_profile()
    with _lock:
        _profiles.append(profile)
    profile.enable()


def cpu_profile() -> cProfile.Profile:
    """A profile of the calling thread's CPU time (one per thread: the clock is the thread's own)."""
    return cProfile.Profile(time.thread_time)


def merged(profiles: list[cProfile.Profile]) -> pstats.Stats | None:
    stats = None
    for profile in profiles:
        profile.create_stats()
        if not profile.stats:
            continue
        if stats is None:
            stats = pstats.Stats(profile)
        else:
            stats.add(profile)
    return stats


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "-m":
        print(
            "usage: python -m multipass_bench.profile_service OUT.prof -m MODULE [ARGS...]", file=sys.stderr
        )
        return 2
    out, module, rest = argv[0], argv[2], argv[3:]
    sys.argv = [module, *rest]
    threading.setprofile(_start_in_thread)
    main_profile = cpu_profile()
    _profiles.append(main_profile)
    code = 0
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        main_profile.disable()
        threading.setprofile(None)
        with _lock:
            stats = merged(list(_profiles))
        if stats is not None:
            stats.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
