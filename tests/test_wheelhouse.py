"""The wheelhouse: requirements resolved on the workstation with the real pip against PyPI, shipped
through a real connection, installed in a network namespace that has no route out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import LocalConnection
from toolkit.resources.wheelhouse import (
    HostPlatform,
    install_args,
    is_offline,
    local_platform,
    parse_platform,
    resolve,
    ship,
)


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
    assert house.path == tmp_path / "wheelhouse" / "cp311-aarch64-glibc2.31"


def test_unknown_requirement_names_the_platform(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="pip download for cp311-x86_64-glibc2.36"):
        resolve(
            ["no-such-package-toolkit-test"], parse_platform("3.11 x86_64 glibc 2.36"), tmp_path
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")
def test_offline_host_installs_from_shipped_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = local_platform()
    house = resolve(["supervisor"], platform, tmp_path / "cache")
    assert any(wheel.name.startswith("supervisor-") for wheel in house.wheels)

    # Resolved once: a second resolve with the index switched off does not call pip at all.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert resolve(["supervisor"], platform, tmp_path / "cache").wheels == house.wheels

    conn = LocalConnection()
    remote = str(tmp_path / "host" / "wheels" / platform.key)
    ship(conn, house, remote)
    shipped = sorted(p.name for p in Path(remote).glob("*.whl"))
    assert shipped == [wheel.name for wheel in house.wheels]
    trips = conn.round_trips
    ship(conn, house, remote)  # nothing missing: one listing, no copies
    assert conn.round_trips == trips + 1

    # The "host": a network namespace with only a loopback that is down, no route anywhere.
    venv = tmp_path / "host" / "venv"
    pip_install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    script = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip_install, *install_args(remote), "supervisor"],
        [str(venv / "bin" / "python"), "-c", "import supervisor.supervisord"],
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    for argv in script:
        result = subprocess.run(
            [shutil.which("unshare") or "unshare", "--net", *argv],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]

    # The same install reaching for the index fails in that namespace: the test can fail.
    fresh = tmp_path / "host" / "venv2"
    subprocess.run(["unshare", "--net", sys.executable, "-m", "venv", str(fresh)], check=True)
    online = subprocess.run(
        [
            "unshare",
            "--net",
            str(fresh / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--retries",
            "0",
            "--timeout",
            "5",
            "supervisor",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert online.returncode != 0
