"""requirements.lock pins every package of `pip install -e .[dev]`, within pyproject.toml's ranges, and the venv
holds exactly those versions: a fresh install is the install the tests were written against (`make lock` refreshes
the pins on purpose)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# Python 3.11+ (the lock is resolved on 3.11)
tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
PROJECT = "gliclass-lab"


def read_lock(path: Path = ROOT / "requirements.lock") -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: not a `name==version` pin: {raw!r}")
        name = canonicalize_name(match.group(1))
        if name in pins:
            raise ValueError(f"{path.name}:{number}: {name} is pinned twice")
        pins[name] = Version(match.group(2))
    return pins


def project_requirements(extras: tuple[str, ...] = ("dev",)) -> list[Requirement]:
    """pyproject.toml's dependencies plus the extras asked for, self-references (gliclass-lab[onnx]) expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    todo, seen, out = list(extras), set(), [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in optional[extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == PROJECT:
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def drift(pins: dict[str, Version], requirements: list[Requirement]) -> list[str]:
    """Each direct requirement that the lock leaves out or pins outside its range."""
    problems = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is required by pyproject.toml but not pinned")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name}=={pin} is outside pyproject.toml's range {req.specifier}")
    return problems


def test_pins_stay_inside_the_ranges_of_pyproject() -> None:
    assert drift(read_lock(), project_requirements()) == []


def test_drift_is_reported_by_name() -> None:
    pins = {"torch": Version("2.16.0")}
    problems = drift(pins, [Requirement("torch>=2.4,<2.15"), Requirement("lightning>=2.4")])
    assert problems == [
        "torch==2.16.0 is outside pyproject.toml's range <2.15,>=2.4",
        "lightning is required by pyproject.toml but not pinned",
    ]


def test_a_malformed_lock_line_is_an_error_with_its_line(tmp_path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\ntorch==2.13.0\ntransformers>=5\n")
    with pytest.raises(ValueError, match=r"requirements.lock:3: not a `name==version` pin"):
        read_lock(lock)


def installed_closure() -> dict[str, Version]:
    """Every distribution that `gliclass-lab[dev]` needs in this venv, transitively, with its installed version."""
    found: dict[str, Version] = {}
    todo = [(req, ()) for req in project_requirements()]
    while todo:
        req, parent_extras = todo.pop()
        env = [{"extra": e} for e in parent_extras] or [{"extra": ""}]
        if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
            continue
        name = canonicalize_name(req.name)
        if name in found and not req.extras:
            continue
        dist = metadata.distribution(req.name)
        found[name] = Version(dist.version)
        todo.extend((Requirement(r), tuple(req.extras)) for r in dist.requires or [])
    return found


def test_the_venv_holds_exactly_the_locked_versions() -> None:
    pins = read_lock()
    mismatched = {
        name: (str(version), str(pins.get(name)))
        for name, version in installed_closure().items()
        # the local build tag (2.13.0+cpu) is not part of the pin
        if pins.get(name) is None or Version(version.public) != pins[name]
    }
    assert not mismatched, f"installed vs locked (run `make setup`, or `make lock` to re-pin): {mismatched}"


def test_every_installer_uses_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install_lines = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert install_lines and all("-c requirements.lock" in line for line in install_lines), install_lines
    conda = (ROOT / "environment.yml").read_text()
    assert "- -c requirements.lock" in conda
    torch_pin = f"torch=={read_lock()['torch']}"
    assert torch_pin in conda and torch_pin in makefile
