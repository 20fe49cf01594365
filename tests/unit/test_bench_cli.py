"""``multipass bench``: registered in the CLI, options forwarded to the bench or the GPU script."""

from __future__ import annotations

import argparse

from multipass_bench import bench_cmd
from multipass_client.cli.main import build_parser


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_bench_is_a_command():
    args = parse()
    assert args.run is bench_cmd.run_bench
    assert not args.gpu and not args.quick and not args.json


def test_options_go_to_the_bench_runner():
    assert bench_cmd.bench_argv(parse("--quick", "--json", "--only", "crop_vs_full_speedup")) == [
        "--quick",
        "--json",
        "--only",
        "crop_vs_full_speedup",
    ]


def test_gpu_options_go_to_the_gpu_script():
    args = parse("--gpu", "--tiny", "--quick", "--steps", "4", "--families", "sd15")
    assert bench_cmd.gpu_argv(args) == ["--tiny", "--repetitions", "1", "--steps", "4", "--families", "sd15"]


def test_gpu_only_options_without_gpu_are_refused(capsys):
    assert bench_cmd.run_bench(parse("--tiny")) == 2
    assert "--gpu" in capsys.readouterr().out


def test_bench_module_runs_the_runner(monkeypatch):
    seen = []
    monkeypatch.setattr("multipass_bench.runner.main", lambda argv: seen.append(argv) or 0)
    assert bench_cmd.run_bench(parse("--quick")) == 0
    assert seen == [["--quick"]]
