"""The virtualenv bundle: wheels resolved and unpacked once on the workstation, installed on a
"host" (the system python3, in a network namespace with no network at all) by the shell script
toolkit runs there. Real pip against the package index for the resolving, real wheels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.sshbed import ssh_hosts  # noqa: F401  (fixture)
from tests.test_ssh import open_ssh
from toolkit.errors import ToolkitError
from toolkit.hosts.facts import Facts
from toolkit.inventory import Host
from toolkit.resources.base import Change, HostContext, RunOptions
from toolkit.resources.runtime import Virtualenv
from toolkit.resources.venv_bundle import (
    SCRIPT_HEADER,
    build,
    install_script,
    unpack_wheel,
    write_scripts,
)
from toolkit.resources.wheelhouse import Wheelhouse, local_platform, parse_platform, resolve

HOST_PYTHON = "/usr/bin/python3"  # the "host's" python3: not the one running the tests
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")


def host_platform():
    probe = subprocess.run(
        [HOST_PYTHON, "-c", "import platform, sys; print('%d.%d' % sys.version_info[:2], "
         "platform.machine(), *platform.libc_ver())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return parse_platform(probe.stdout)


def offline(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``argv`` in a new network namespace: only a loopback that is down, no route at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return subprocess.run(
        ["unshare", "--net", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A wheel with these files, its dist-info and a RECORD (not checked by the bundle)."""
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/RECORD": "",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_wheel_parts_land_where_an_installer_puts_them(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "tkdemo", "1.0", {
        "tkdemo/__init__.py": "def main():\n    print('tkdemo main')\n",
        "tkdemo-1.0.data/purelib/tkextra.py": "X = 1\n",
        "tkdemo-1.0.data/scripts/tkdemo-sh": "#!/bin/sh\necho shell script\n",
        "tkdemo-1.0.data/scripts/tkdemo-py": "#!python\nprint('python script')\n",
        "tkdemo-1.0.data/data/share/tkdemo/readme.txt": "data\n",
        "tkdemo-1.0.dist-info/entry_points.txt": "[console_scripts]\ntkdemo = tkdemo:main\n",
    })  # fmt: skip
    site, prefix = tmp_path / "site", tmp_path / "prefix"
    unpack_wheel(wheel, site, prefix)
    assert (site / "tkdemo" / "__init__.py").is_file()
    assert (site / "tkextra.py").read_text() == "X = 1\n"
    assert (prefix / "share" / "tkdemo" / "readme.txt").read_text() == "data\n"
    assert (prefix / "bin" / "tkdemo-sh").read_text().startswith("#!/bin/sh\necho")
    assert (prefix / "bin" / "tkdemo-py").read_text() == SCRIPT_HEADER + "print('python script')\n"
    assert (site / "tkdemo-1.0.dist-info" / "INSTALLER").read_text() == "toolkit\n"
    assert os.access(prefix / "bin" / "tkdemo", os.X_OK)
    assert not list(site.glob("*.data"))


def test_console_scripts_name_no_interpreter_path(tmp_path: Path) -> None:
    written = write_scripts(
        "[console_scripts]\nplain = pkg.cli:main\ndotted = pkg.cli:App.run\n"
        "[gui_scripts]\nwindow = pkg.gui:start [extra]\n",
        tmp_path,
    )
    assert sorted(p.name for p in written) == ["dotted", "plain", "window"]
    dotted = (tmp_path / "dotted").read_text()
    assert dotted.startswith(SCRIPT_HEADER) and "from pkg.cli import App" in dotted
    assert "sys.exit(App.run())" in dotted
    assert "/usr/bin" not in dotted and sys.executable not in dotted


@needs_root
def test_bundle_installs_on_a_host_without_network_and_replaces_what_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform = host_platform()
    cache = tmp_path / "cache"
    house = resolve(["supervisor"], platform, cache)
    bundle = build(house, cache)
    assert build(house, cache) == bundle  # built once: the same file, found by its digest
    assert bundle.path.name.startswith(platform.key)
    other = build(resolve(["idna"], platform, cache), cache)

    # Resolved once: a second resolve with the index switched off does not call pip at all.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert resolve(["supervisor"], platform, cache).wheels == house.wheels

    # Installed where no path of the workstation's build exists, by the host's own python3.
    venv = tmp_path / "host data" / "venv"  # a space, as a data dir may hold
    shipped = tmp_path / "host data" / "downloads" / bundle.path.name
    shipped.parent.mkdir(parents=True)
    shutil.copyfile(bundle.path, shipped)
    done = offline(
        ["sh", "-c", install_script(HOST_PYTHON, str(venv), str(shipped), platform.python)]
    )
    assert done.returncode == 0, done.stderr
    assert not shipped.exists()  # the bundle file is removed once unpacked
    version = offline([str(venv / "bin" / "supervisord"), "--version"])
    assert version.returncode == 0 and version.stdout.strip().startswith("4."), version
    assert not (venv / "bin" / "pip").exists()
    site = Path(offline([str(venv / "bin/python"), "-c", "import supervisor; print(supervisor.__path__[0])"]).stdout.strip()).parent  # fmt: skip
    assert site.is_relative_to(venv) and site.name == "site-packages"
    # byte-code built on the workstation is used as it is (same python minor): none rewritten
    if sys.version_info[:2] == platform.python:
        compiled = {p: p.stat().st_mtime_ns for p in site.rglob("*.pyc")}
        assert compiled
        offline([str(venv / "bin/python"), "-c", "import supervisor.supervisord"])
        assert {p: p.stat().st_mtime_ns for p in site.rglob("*.pyc")} == compiled

    # Another set replaces the packages as a whole: supervisor is gone, idna is there.
    shutil.copyfile(other.path, shipped)
    again = offline(
        ["sh", "-c", install_script(HOST_PYTHON, str(venv), str(shipped), platform.python)]
    )
    assert again.returncode == 0, again.stderr
    check = offline([str(venv / "bin/python"), "-c", "import idna, importlib.util as u; "
                     "print(u.find_spec('supervisor'))"])  # fmt: skip
    assert check.returncode == 0 and check.stdout.strip() == "None", check
    assert not list(venv.glob("**/site-packages.old"))
    assert not (venv / "bin" / "supervisord").exists()  # its scripts went with it
    assert (venv / "bin" / "idna").is_file() and (venv / "bin" / "activate").is_file()


def test_a_platform_without_wheels_fails_to_build(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no wheels resolved"):
        build(Wheelhouse(empty, local_platform(), ("x",)), tmp_path)


@needs_root
def test_without_wheels_for_its_platform_an_online_host_runs_pip_and_an_offline_one_fails(
    ssh_hosts,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workstation resolves nothing here (no index, no config): the host's own pip, which
    reaches its index over its own network, is the fallback; an offline host has none."""
    bed_host = ssh_hosts[3]
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    data = f"{bed_host.home}/tk"
    conn = open_ssh(bed_host)
    try:
        ctx = HostContext(
            host=Host(bed_host.name, {}, ["all"]), play=None, conn=conn,
            facts=Facts(python3="/usr/bin/python3", data_dir=data), data_dir=data,
            vars={"offline": True}, options=RunOptions(),
        )  # fmt: skip
        venv = Virtualenv()
        change = Change(venv, "create virtualenv", data=["idna"])
        with pytest.raises(ToolkitError, match="this host is offline .*could not be built on the "
                           "workstation: pip download for cp3"):  # fmt: skip
            venv.apply(change, ctx)
        assert not (bed_host.home / "tk" / "venv").exists()

        ctx.vars = {}
        venv.apply(change, ctx)
        check = conn.run(f"{data}/venv/bin/python -c 'import idna, pip'")
        assert check.ok, check.stderr
        assert (bed_host.home / "tk/venv/toolkit-requirements.txt").read_text() == "idna\n"
    finally:
        conn.close()
        bed_host.clean_home()
