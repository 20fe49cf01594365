"""Maps the import packages to their folders, and declares the command line and its plugins.

``multipass`` is the runtime library every service imports; ``multipass_client`` the client library and
the ``multipass`` command; ``multipass_dev`` the local stack, tiny models and developer commands;
``multipass_bench`` the benchmark harness. A service image copies only the runtime and its own service,
so only the folders present are mapped, and the command line comes with the client only.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE_ROOTS = {
    "multipass": "shared/multipass",
    "multipass_client": "shared/multipass_client",
    "multipass_dev": "shared/multipass_dev",
    "multipass_bench": "scripts/bench",
    "multipass_prompt_parser": "services/prompt_parser",
    "multipass_gateway": "services/gateway",
    "multipass_segmentation": "services/segmentation",
    "multipass_diffusion": "services/diffusion",
    "multipass_http_api": "services/http_api",
}

#: Entry points by the package that provides them. Each plugin of the ``multipass.cli`` group is a
#: ``register(subparsers)`` function that adds one command of the ``multipass`` command line.
ENTRY_POINTS = {
    "multipass_client": {"console_scripts": ["multipass = multipass_client.cli.main:main"]},
    "multipass": {"multipass.cli": ["models = multipass.model_sync.command:register"]},
    "multipass_dev": {
        "multipass.cli": [
            "parse = multipass_dev.cli.parse_cmd:register",
            "segment = multipass_dev.cli.segment_cmd:register",
            "stack = multipass_dev.cli.stack_cmd:register",
        ]
    },
    "multipass_bench": {"multipass.cli": ["bench = multipass_bench.bench_cmd:register"]},
}

present = {name: path for name, path in PACKAGE_ROOTS.items() if Path(path).is_dir()}
packages = []
entry_points: dict[str, list[str]] = {}
for name, path in present.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(path)]
    for group, entries in ENTRY_POINTS.get(name, {}).items():
        entry_points.setdefault(group, []).extend(entries)

#: Files other than Python modules that a package ships (the HTTP service's web page, the model manifest,
#: the configs single-file checkpoints are converted with).
PACKAGE_DATA = {
    "multipass_http_api": ["static/*"],
    "multipass.model_catalog": ["manifest.toml"],
    "multipass_diffusion": [
        "single_file_configs/*.txt",
        "single_file_configs/*/*.json",
        "single_file_configs/*/*/*.json",
    ],
}

setup(
    packages=packages,
    package_dir=present,
    package_data={name: files for name, files in PACKAGE_DATA.items() if name in packages},
    entry_points=entry_points,
    include_package_data=True,
)
