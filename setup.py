"""Maps the shared library and the four services to their import names."""

from setuptools import find_packages, setup

PACKAGE_ROOTS = {
    "multipass": "shared/multipass",
    "multipass_prompt_parser": "services/prompt_parser",
    "multipass_gateway": "services/gateway",
    "multipass_segmentation": "services/segmentation",
    "multipass_diffusion": "services/diffusion",
}

packages = []
for name, path in PACKAGE_ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(path)]

setup(packages=packages, package_dir=PACKAGE_ROOTS, include_package_data=True)
