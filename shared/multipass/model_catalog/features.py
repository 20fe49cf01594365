"""Which features a model directory provides, which file each one uses, and the command that adds a missing one.

:func:`check` runs the rules of :mod:`.layout` over ``MULTIPASS_MODEL_DIR`` (no model is loaded), so
``multipass models check``, the services' start logs (:func:`log_report`) and their Info rpcs
(:func:`to_proto`) all say the same thing, quickly. The command that adds a missing feature comes from the
manifest (:func:`fix_command`): the first profile that lists the feature, for the model family in question.
The gateway maps the workers' capabilities to features (:func:`feature_of_capability`) to name the same
command when it refuses a job at submit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from multipass.model_catalog.layout import (
    DIFFUSION,
    FEATURE_NAMES,
    RULES,
    SEGMENTATION,
    SERVICES,
    base_models,
)

__all__ = ["DIFFUSION", "FEATURE_NAMES", "SEGMENTATION", "SERVICES", "Feature", "Report", "check"]


@dataclass(frozen=True)
class Feature:
    """One feature of a model directory, as ``multipass models check`` prints it."""

    name: str
    service: str
    available: bool
    #: The files or directories it uses, relative to the model directory ("" when missing).
    path: str = ""
    #: What was found (or what is missing, and why).
    detail: str = ""
    #: ``multipass models pull PROFILE`` when a profile adds or upgrades it; "" when none does or nothing is missing.
    fix: str = ""
    #: Available, but through a lesser stand-in (the Haar face detector); ``fix`` upgrades it.
    fallback: bool = False

    @property
    def status(self) -> str:
        return "fallback" if self.fallback else ("ok" if self.available else "missing")

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


@dataclass
class Report:
    model_dir: Path
    features: list[Feature] = field(default_factory=list)

    def by_name(self) -> dict[str, Feature]:
        return {feature.name: feature for feature in self.features}

    def as_dict(self) -> dict:
        return {"model_dir": str(self.model_dir), "features": [f.as_dict() for f in self.features]}

    def missing(self) -> list[Feature]:
        return [feature for feature in self.features if not feature.available]


# -- fixes -------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _default_manifest():
    from multipass.model_catalog.manifest import load_manifest

    return load_manifest(known_features=FEATURE_NAMES)


def fix_command(feature: str, family: str = "", manifest=None) -> str:
    """``multipass models pull PROFILE`` for the first profile that provides ``feature`` (for ``family``)."""
    manifest = manifest or _default_manifest()
    candidates = manifest.profiles_with(feature)
    fitting = [p for p in candidates if not p.family or not family or p.family == family]
    return fitting[0].command if fitting else ""


#: Diffusion ``Info.capabilities`` names (prefix before ``:`` where they carry one) to feature names.
_CAPABILITY_FEATURES = {
    "upscaler": "upscaler",
    "face_restorer": "face_restorer",
    "face_swapper": "face_swap",
    "prompt_expander": "prompt_expander",
    "faceid": "faceid",
    "inpaint_unet": "inpaint",
}


def feature_of_capability(capability: str) -> str | None:
    """The feature behind a worker capability (``controlnet:pose`` → ``controlnet:pose``, ``faceid:m`` →
    ``faceid``, ``face_swapper`` → ``face_swap``); None for what no model file provides (``pass:<kind>``)."""
    head, _, rest = capability.partition(":")
    if head in ("controlnet", "preprocessor") and f"{head}:{rest}" in FEATURE_NAMES:
        return f"{head}:{rest}"
    kind = rest.partition(":")[0]
    if (
        head == "controlnet" and f"{head}:{kind}" in FEATURE_NAMES
    ):  # per model: controlnet:composition:<model>
        return f"{head}:{kind}"
    return _CAPABILITY_FEATURES.get(head)


# -- the check ---------------------------------------------------------------------------------------


def check(model_dir: Path, *, services: Iterable[str] = SERVICES, manifest=None) -> Report:
    """Every feature of ``model_dir`` the given services use, available or not, with its fix."""
    model_dir = Path(model_dir)
    wanted = set(services)
    models = base_models(model_dir)
    report = Report(model_dir)
    for rule in RULES:
        if rule.service not in wanted:
            continue
        found = rule.find(model_dir, models)
        if not rule.always and not found.available and not found.paths:
            continue
        needs_fix = not found.available or found.fallback
        fix = fix_command(found.fixed_by or rule.name, found.family, manifest) if needs_fix else ""
        report.features.append(
            Feature(
                name=rule.name,
                service=rule.service,
                available=found.available,
                path=", ".join(found.paths),
                detail=found.detail,
                fix=fix,
                fallback=found.fallback,
            )
        )
    return report


def render_table(report: Report) -> str:
    """The report as a plain-text table: feature, status, what it uses (or lacks), and the fix."""
    rows = [("FEATURE", "STATUS", "USES (OR WHY NOT)", "FIX")]
    for feature in report.features:
        uses = feature.path if feature.available and not feature.fallback else feature.detail
        rows.append((feature.name, feature.status, uses, feature.fix))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"model directory: {report.model_dir}"]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    available = sum(1 for feature in report.features if feature.available)
    lines.append(f"{available} of {len(report.features)} features available")
    return "\n".join(line.rstrip() for line in lines)


def log_report(report: Report, logger: logging.Logger) -> None:
    """One log line per feature (the table of ``multipass models check``), then a summary line.

    A missing feature is a warning naming the command that installs it; the rest are info lines.
    """
    for feature in report.features:
        fields = {
            "feature": feature.name,
            "status": feature.status,
            "uses": feature.path,
            "detail": feature.detail,
        }
        if feature.fix:
            fields["fix"] = feature.fix
        level = logging.INFO if feature.available and not feature.fallback else logging.WARNING
        logger.log(level, "model feature %s: %s", feature.name, feature.status, extra=fields)
    available = sum(1 for feature in report.features if feature.available)
    logger.info(
        "model features: %d of %d available",
        available,
        len(report.features),
        extra={"model_dir": str(report.model_dir), "missing": [f.name for f in report.missing()]},
    )


def to_proto(report: Report) -> list:
    """The report as ``multipass.v1.ModelFeature`` messages (for the services' Info rpcs)."""
    from multipass.v1 import common_pb2

    return [
        common_pb2.ModelFeature(
            name=f.name, available=f.available, path=f.path, detail=f.detail, fix=f.fix, fallback=f.fallback
        )
        for f in report.features
    ]
