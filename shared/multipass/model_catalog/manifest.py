"""The curated manifest (``manifest.toml``): which Hub files each ``multipass models pull`` profile fetches.

:func:`load_manifest` reads and checks it once: every problem is reported together as ``InvalidInput``
field violations naming the profile, the file's index and the key (``profiles.sd15.files[3].target``), the
value and what is allowed. Nothing here touches the network; :mod:`multipass.model_sync.hub_pull` does.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from multipass.errors import InvalidInput, Violation, echo

MANIFEST_PATH = Path(__file__).with_name("manifest.toml")
SCHEMA = 1
#: The top folders of the model directory a target may land in (docs/CONTRACTS.md).
TARGET_ROOTS = ("diffusion", "segmentation")
FAMILIES = ("sd15", "sdxl")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,99}$")
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PROFILE_KEYS = {"description", "licence", "family", "features", "size_mb", "files"}
_FILE_KEYS = {"repo", "revision", "path", "target", "bytes", "sha256"}


@dataclass(frozen=True)
class ModelFile:
    """One file of a Hub repository and where it lands below the model directory."""

    repo: str
    revision: str
    path: str
    target: str
    bytes: int | None = None
    sha256: str | None = None

    @property
    def source(self) -> str:
        return f"{self.repo}@{self.revision}:{self.path}"

    @property
    def url_path(self) -> str:
        """``<repo>/resolve/<revision>/<path>``: the Hub's file address below its endpoint."""
        return f"{self.repo}/resolve/{self.revision}/{self.path}"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    licence: str
    features: tuple[str, ...]
    size_mb: int
    files: tuple[ModelFile, ...]
    #: The model family the profile's files belong to ("" when they serve every family).
    family: str = ""

    @property
    def command(self) -> str:
        return f"multipass models pull {self.name}"


@dataclass(frozen=True)
class Manifest:
    profiles: dict[str, Profile]
    source: Path

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise InvalidInput.of(
                [Violation("profile", f"got {echo(name)}; expected one of {', '.join(self.profiles)}")]
            ) from None

    def select(self, names: Iterable[str]) -> list[Profile]:
        """The named profiles in the order given (each once); every unknown name in one error."""
        names = list(dict.fromkeys(names))
        unknown = [name for name in names if name not in self.profiles]
        if unknown:
            raise InvalidInput.of(
                [
                    Violation("profile", f"got {echo(name)}; expected one of {', '.join(self.profiles)}")
                    for name in unknown
                ]
            )
        return [self.profiles[name] for name in names]

    def files(self, profiles: Iterable[Profile]) -> list[ModelFile]:
        """The files of ``profiles``, each target once (profiles may share a file, e.g. the face embedder)."""
        seen: dict[str, ModelFile] = {}
        for profile in profiles:
            for item in profile.files:
                seen.setdefault(item.target, item)
        return list(seen.values())

    def profiles_with(self, feature: str) -> list[Profile]:
        return [profile for profile in self.profiles.values() if feature in profile.features]


def in_pull_order(items: list[ModelFile]) -> list[ModelFile]:
    """Weights and other files first, then ``*config.json``, then ``model_index.json``: a loader and
    ``models check`` recognise a component by its config, so a pull that stops early never leaves a config
    announcing weights that have not arrived."""

    def rank(item: ModelFile) -> int:
        name = item.target.rsplit("/", 1)[-1]
        return 2 if name == "model_index.json" else 1 if name.endswith("config.json") else 0

    return sorted(items, key=rank)  # stable: the manifest's order within each rank


@dataclass(frozen=True)
class Presence:
    """How much of a profile a model directory holds."""

    files_present: int
    bytes_present: int


def profile_presence(profile: Profile, model_dir: Path) -> Presence:
    """Files of ``profile`` found at their targets (of the manifest's size, where it names one)."""
    count = total = 0
    for item in profile.files:
        path = Path(model_dir) / item.target
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if path.is_file() and (item.bytes is None or size == item.bytes):
            count += 1
            total += size
    return Presence(count, total)


def load_manifest(path: Path | None = None, *, known_features: Iterable[str] | None = None) -> Manifest:
    """Read and check the manifest at ``path`` (default: the curated one shipped with the runtime).

    ``known_features``: the feature names a profile may list (default: those of
    :mod:`multipass.model_catalog.features`).
    """
    path = Path(path) if path is not None else MANIFEST_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInput.of([Violation("manifest", f"{path} is not readable: {error}")]) from error
    except tomllib.TOMLDecodeError as error:
        raise InvalidInput.of([Violation("manifest", f"{path} is not valid TOML: {error}")]) from error
    if known_features is None:
        from multipass.model_catalog.features import FEATURE_NAMES

        known_features = FEATURE_NAMES
    return parse_manifest(data, source=path, known_features=frozenset(known_features))


def parse_manifest(data: dict, *, source: Path, known_features: frozenset[str]) -> Manifest:
    problems: list[Violation] = []
    if data.get("schema") != SCHEMA:
        problems.append(Violation("schema", f"got {echo(data.get('schema'))}; expected {SCHEMA}"))
    raw_profiles = data.get("profiles")
    if not isinstance(raw_profiles, dict) or not raw_profiles:
        problems.append(Violation("profiles", "expected a table of at least one profile"))
        raise InvalidInput.of(problems)
    profiles = {}
    by_target: dict[str, tuple[str, ModelFile]] = {}
    for name, raw in raw_profiles.items():
        profile = _parse_profile(name, raw, known_features, problems)
        if profile is None:
            continue
        profiles[name] = profile
        for index, item in enumerate(profile.files):
            where = f"profiles.{name}.files[{index}].target"
            earlier = by_target.get(item.target)
            if earlier is None:
                by_target[item.target] = (name, item)
            elif earlier[1] != item:
                problems.append(
                    Violation(where, f"{item.target} is also a different file of profile {earlier[0]}")
                )
    if problems:
        raise InvalidInput.of(problems)
    return Manifest(profiles, source)


def _parse_profile(
    name: str, raw: object, known_features: frozenset[str], problems: list[Violation]
) -> Profile | None:
    where = f"profiles.{name}"
    if not _PROFILE_NAME.match(name):
        problems.append(Violation(where, "a profile name is 1-40 lowercase letters, digits and '-'"))
    if not isinstance(raw, dict):
        problems.append(Violation(where, "expected a table"))
        return None
    for key in sorted(set(raw) - _PROFILE_KEYS):
        problems.append(
            Violation(f"{where}.{key}", f"unknown key; expected {', '.join(sorted(_PROFILE_KEYS))}")
        )
    for key in ("description", "licence"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            problems.append(Violation(f"{where}.{key}", "expected a non-empty string"))
    family = raw.get("family", "")
    if family not in ("", *FAMILIES):
        problems.append(
            Violation(f"{where}.family", f"got {echo(family)}; expected one of {', '.join(FAMILIES)}")
        )
    features = raw.get("features")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        problems.append(Violation(f"{where}.features", "expected a non-empty list of feature names"))
        features = []
    for feature in features:
        if feature not in known_features:
            problems.append(
                Violation(
                    f"{where}.features",
                    f"got {echo(feature)}; expected one of {', '.join(sorted(known_features))}",
                )
            )
    size_mb = raw.get("size_mb")
    if not isinstance(size_mb, int) or isinstance(size_mb, bool) or size_mb < 1:
        problems.append(
            Violation(f"{where}.size_mb", f"got {echo(size_mb)}; expected a whole number of MB >= 1")
        )
        size_mb = 0
    raw_files = raw.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        problems.append(Violation(f"{where}.files", "expected a non-empty list of files"))
        raw_files = []
    files = [_parse_file(f"{where}.files[{i}]", item, problems) for i, item in enumerate(raw_files)]
    return Profile(
        name=name,
        description=str(raw.get("description", "")),
        licence=str(raw.get("licence", "")),
        features=tuple(features),
        size_mb=size_mb,
        files=tuple(item for item in files if item is not None),
        family=family if isinstance(family, str) else "",
    )


def _parse_file(where: str, raw: object, problems: list[Violation]) -> ModelFile | None:
    if not isinstance(raw, dict):
        problems.append(Violation(where, "expected a table"))
        return None
    count = len(problems)
    for key in sorted(set(raw) - _FILE_KEYS):
        problems.append(Violation(f"{where}.{key}", f"unknown key; expected {', '.join(sorted(_FILE_KEYS))}"))
    repo = raw.get("repo")
    if not isinstance(repo, str) or not _REPO_ID.match(repo):
        problems.append(
            Violation(f"{where}.repo", f"got {echo(repo)}; expected a Hub repository id 'owner/name'")
        )
    revision = raw.get("revision")
    if not isinstance(revision, str) or not _REVISION.match(revision) or ".." in revision:
        problems.append(
            Violation(f"{where}.revision", f"got {echo(revision)}; expected a branch, tag or commit")
        )
    for key in ("path", "target"):
        value = raw.get(key)
        if not isinstance(value, str) or not _is_relative_file(value):
            problems.append(
                Violation(
                    f"{where}.{key}", f"got {echo(value)}; expected a relative file path without '.' or '..'"
                )
            )
    target = raw.get("target")
    if isinstance(target, str) and _is_relative_file(target) and target.split("/", 1)[0] not in TARGET_ROOTS:
        problems.append(
            Violation(
                f"{where}.target", f"got {echo(target)}; expected a path below {' or '.join(TARGET_ROOTS)}/"
            )
        )
    size = raw.get("bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        problems.append(
            Violation(f"{where}.bytes", f"got {echo(size)}; expected the file's size in bytes (>= 1)")
        )
    sha256 = raw.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        problems.append(Violation(f"{where}.sha256", f"got {echo(sha256)}; expected 64 lowercase hex digits"))
    if len(problems) > count:
        return None
    return ModelFile(repo, revision, raw["path"], target, size, sha256)


def _is_relative_file(value: str) -> bool:
    if not value or value.startswith("/") or value.endswith("/") or "\\" in value:
        return False
    return all(part not in ("", ".", "..") for part in PurePosixPath(value).parts) and "//" not in value
