"""The wheelhouse: requirements resolved on the workstation with the real pip against PyPI, for
the host's platform rather than the workstation's (tests/test_venv_bundle.py installs them on a
"host" without network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import ToolkitError
from toolkit.offline import is_offline
from toolkit.resources.wheelhouse import HostPlatform, parse_platform, resolve


def test_platform_key_and_tags() -> None:
    platform = parse_platform("3.11 x86_64 glibc 2.36\n")
    assert platform == HostPlatform((3, 11), "x86_64", "glibc", (2, 36))
    assert platform.key == "cp311-x86_64-glibc2.36"
    tags = platform.platform_tags()
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "any"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    args = platform.pip_target_args()
    assert args[:5] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]


def test_platform_without_glibc() -> None:
    platform = parse_platform("3.12 arm64  ")  # macOS: libc_ver() is empty
    assert platform.key == "cp312-arm64-nolibc" and platform.platform_tags() == ["any"]


def test_unreadable_platform_is_refused() -> None:
    with pytest.raises(ToolkitError, match="cannot read the host's python platform"):
        parse_platform("python3: not found")


@pytest.mark.parametrize(
    ("host_vars", "offline"),
    [
        ({}, False),
        ({"offline": True}, True),
        ({"offline": "yes"}, True),
        ({"toolkit_offline": "true"}, True),
        ({"offline": False, "toolkit_offline": "false"}, False),
    ],
)
def test_offline_switch(host_vars: dict, offline: bool) -> None:
    assert is_offline(host_vars) is offline


def test_resolves_wheels_for_another_platform(tmp_path: Path) -> None:
    arm = HostPlatform((3, 11), "aarch64", "glibc", (2, 31))
    house = resolve(["httptools"], arm, tmp_path)
    names = [wheel.name for wheel in house.wheels]
    assert len(names) == 1 and "aarch64" in names[0] and "cp311" in names[0], names
    assert house.path.parent == tmp_path / "wheelhouse" / "cp311-aarch64-glibc2.31"


def test_each_set_of_requirements_has_its_own_wheels(tmp_path: Path) -> None:
    """Two sets never share a folder: a bundle of one never holds a wheel of the other."""
    platform = parse_platform("3.11 x86_64 glibc 2.36")
    small = resolve(["idna"], platform, tmp_path)
    both = resolve(["idna", "h11"], platform, tmp_path)
    assert small.path != both.path
    assert [w.name.split("-")[0] for w in small.wheels] == ["idna"]
    assert sorted(w.name.split("-")[0] for w in both.wheels) == ["h11", "idna"]


def test_unknown_requirement_names_the_platform(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="pip download for cp311-x86_64-glibc2.36"):
        resolve(
            ["no-such-package-toolkit-test"], parse_platform("3.11 x86_64 glibc 2.36"), tmp_path
        )
