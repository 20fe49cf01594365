"""The bench's service profiler: every thread profiled, CPU time counted rather than waiting."""

from __future__ import annotations

import pstats
import sys
import textwrap

from multipass_bench import profile_service


def seconds(stats: pstats.Stats, name: str) -> float:
    """Cumulative seconds of the functions named ``name``."""
    return sum(row[3] for (_file, _line, function), row in stats.stats.items() if function == name)


def test_a_service_waiting_is_not_charged_and_its_threads_work_is(tmp_path, monkeypatch):
    module = tmp_path / "sleepy_service.py"
    module.write_text(
        textwrap.dedent(
            """
            import threading
            import time

            def burn():
                deadline = time.thread_time() + 0.15
                while time.thread_time() < deadline:
                    pass

            def wait():
                time.sleep(0.4)

            worker = threading.Thread(target=burn)
            worker.start()
            wait()
            worker.join()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    out = tmp_path / "sleepy.prof"
    assert profile_service.main([str(out), "-m", "sleepy_service"]) == 0
    stats = pstats.Stats(str(out))
    assert seconds(stats, "<built-in method time.sleep>") < 0.05  # 0.4 s of waiting, no CPU
    assert seconds(stats, "burn") >= 0.1  # the thread's CPU, seen in its own profile
