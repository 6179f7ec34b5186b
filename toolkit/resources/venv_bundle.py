"""toolkit's virtualenv contents, built once per platform on the workstation and shipped as one file.

Without it every host runs ``pip install``: the same downloads, the same dependency resolution,
the same unpacking and byte-compiling once per host (40 of the 48 seconds of a first apply on
16 hosts, measured with bench/fleet.py), and nothing at all on a host without internet. With
it the workstation resolves the requirements into a wheelhouse (``wheelhouse.resolve``: the
host's Python version, machine and libc), unpacks those wheels the way an installer does into a
tree laid out like a virtualenv, byte-compiles it when its own Python has the host's version,
and packs it into ``<cache>/venv-bundles/<platform>-<digest>.tar.gz``: one file per platform
and set of requirements, identical for every host of that platform, so it travels like a model
(``place_blob``: checked by sha256 on arrival, and the fan-out applies).

On the host the virtualenv itself is made by the host's own ``python3 -m venv --without-pip``:
``pyvenv.cfg``, ``bin/python`` and the activate scripts hold absolute paths (the interpreter's,
the venv's), so they are never shipped. What is shipped holds none:

- ``site/``: the packages, unpacked into the venv's site-packages. Extension modules and the libraries auditwheel bundled find each other
  through ``$ORIGIN``; byte-code compiled here has its file name fixed at import
  (``importlib`` does it for every .pyc), and its source timestamps travel in the tar;
- ``prefix/``: the rest, over the venv's root: console scripts (``supervisord``...), written
  by this module with a header that runs the ``python`` next to them (``$0``'s folder) instead
  of an absolute ``#!`` line, and any data files a wheel installs into the prefix.

pip is not in the venv (none of toolkit's code calls it), so the host's python3 needs no
``ensurepip`` (Debian's python3-venv) either. The site-packages folder is replaced as a whole,
so packages dropped from the requirements go too.
"""

from __future__ import annotations

import compileall
import configparser
import contextlib
import hashlib
import os
import re
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import quote
from toolkit.models.store import hash_file
from toolkit.resources.wheelhouse import HostPlatform, Wheelhouse, locked

SITE = "site"  # archive folder unpacked into the venv's site-packages
PREFIX = "prefix"  # archive folder unpacked over the venv's root
INSTALLER = "toolkit"
# Runs the python beside the script, wherever the venv is (the same two lines pip writes when a
# shebang would be too long, with the folder of $0 instead of an absolute path); Python itself
# reads them as a comment and a string.
SCRIPT_HEADER = "#!/bin/sh\n'''exec' \"$(dirname -- \"$0\")/python\" \"$0\" \"$@\"\n' '''\n"
SCRIPT = """{header}# -*- coding: utf-8 -*-
import re
import sys
from {module} import {head}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""
# What ``python -m venv`` puts in bin/ itself: kept when the packages' scripts are replaced.
VENV_OWN_BIN = "python|python3|python3.*|activate|activate.*|Activate.ps1"
_ENTRY = re.compile(r"^(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+))?\s*(\[.*\])?\s*$")


@dataclass(frozen=True)
class Bundle:
    """One platform's virtualenv contents in one file, and its sha256."""

    path: Path
    sha256: str
    platform: HostPlatform


def build(house: Wheelhouse, cache: Path) -> Bundle:
    """The bundle of ``house``'s wheels: built once, then found by the digest of their names
    and sizes (a wheel's name holds its version: a new version is another bundle)."""
    wheels = house.wheels
    if not wheels:
        raise ToolkitError(f"no wheels resolved for {house.platform.key}")
    ident = hashlib.sha256()
    for wheel in wheels:
        ident.update(f"{wheel.name} {wheel.stat().st_size}\n".encode())
    compiled = _same_python(house.platform)
    ident.update(f"compiled={compiled}".encode())
    folder = cache / "venv-bundles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{house.platform.key}-{ident.hexdigest()[:16]}.tar.gz"
    digest_file = path.with_name(path.name + ".sha256")
    with locked(folder / f"{house.platform.key}.lock"):
        if path.is_file() and digest_file.is_file():
            return Bundle(path, digest_file.read_text().strip(), house.platform)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
            tree = Path(tmp) / "tree"
            for wheel in wheels:
                unpack_wheel(wheel, tree / SITE, tree / PREFIX)
            if compiled:
                compileall.compile_dir(tree / SITE, quiet=2, workers=1)
            partial = Path(tmp) / "bundle.tar.gz"
            _pack(tree, partial)
            sha = hash_file(partial)[0]
            os.replace(partial, path)
        digest_file.write_text(sha + "\n")
    return Bundle(path, sha, house.platform)


def unpack_wheel(wheel: Path, site: Path, prefix: Path) -> None:
    """Install one wheel into ``site`` and ``prefix`` as an installer would: the packages into
    site; from ``<name>.data/``, purelib and platlib into site, scripts and data into the
    prefix, headers into ``prefix/include``; console scripts from its entry points."""
    site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            if name.endswith("/") or ".." in Path(name).parts or name.startswith("/"):
                continue
            head, _, rest = name.partition("/")
            if head.endswith(".data") and rest:
                scheme, _, inner = rest.partition("/")
                target = {
                    "purelib": site,
                    "platlib": site,
                    "scripts": prefix / "bin",
                    "data": prefix,
                    "headers": prefix / "include",
                }.get(scheme)
                if target is None or not inner:
                    continue
                dest = target / inner
            else:
                dest = site / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = archive.read(info)
            if head.endswith(".data") and rest.startswith("scripts/") and data.startswith(b"#!"):
                first, _, body = data.partition(b"\n")
                if b"python" in first:  # "#!python": the installer's interpreter
                    data = SCRIPT_HEADER.encode() + body
            dest.write_bytes(data)
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 or dest.parent == prefix / "bin":
                dest.chmod(0o755)
    info_dirs = [p for p in site.glob("*.dist-info") if (p / "WHEEL").is_file()]
    for dist_info in info_dirs:
        installer = dist_info / "INSTALLER"
        if not installer.exists():
            installer.write_text(INSTALLER + "\n")
    entry_points = _dist_info(site, wheel) / "entry_points.txt"
    if entry_points.is_file():
        write_scripts(entry_points.read_text(), prefix / "bin")


def write_scripts(entry_points: str, bin_dir: Path) -> list[Path]:
    """The console and GUI scripts an ``entry_points.txt`` declares, as relocatable files."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(entry_points)
    written = []
    for section in ("console_scripts", "gui_scripts"):
        if not parser.has_section(section):
            continue
        for name, value in parser.items(section):
            match = _ENTRY.match(value)
            if not match or not re.fullmatch(r"[\w.-]+", name):
                raise ToolkitError(f"entry point {name} = {value!r} is not module:function")
            module, attr = match["module"], match["attr"]
            if attr:
                head, _, rest = attr.partition(".")
                call = f"{head}.{rest}" if rest else head
                text = SCRIPT.format(header=SCRIPT_HEADER, module=module, head=head, call=call)
            else:
                text = SCRIPT.format(
                    header=SCRIPT_HEADER, module="importlib", head="import_module",
                    call=f"import_module({module!r}).main",
                )  # fmt: skip
            bin_dir.mkdir(parents=True, exist_ok=True)
            script = bin_dir / name
            script.write_text(text)
            script.chmod(0o755)
            written.append(script)
    return written


def install_script(python3: str, venv: str, bundle: str, python: tuple[int, int]) -> str:
    """POSIX shell that makes ``venv`` hold exactly the bundle's packages.

    The venv is made by the host's python3 (version ``python``) when missing; the bundle is
    unpacked beside it, its site folder takes the place of the venv's site-packages
    (``lib/pythonX.Y/site-packages`` in every POSIX venv CPython makes) in two renames, the
    scripts of the packages it replaces go (a venv made by pip keeps its ``python`` and
    ``activate`` files only), and its prefix folder is copied over the venv's root. The bundle
    file is removed at the end."""
    new, v = quote(f"{venv}/.toolkit-new"), quote(venv)
    site = quote(f"{venv}/lib/python{python[0]}.{python[1]}/site-packages")
    return (
        "set -e\n"
        f"[ -x {v}/bin/python ] || {quote(python3)} -m venv --without-pip {v}\n"
        f"rm -rf {new}; mkdir -p {new}\n"
        f"tar -xzf {quote(bundle)} -C {new}\n"
        f"rm -rf {site}.old; if [ -d {site} ]; then mv {site} {site}.old; fi\n"
        f"mkdir -p {v}/lib/python{python[0]}.{python[1]}; mv {new}/{SITE} {site}\n"
        f'for f in {v}/bin/*; do case ${{f##*/}} in {VENV_OWN_BIN}) ;; *) rm -f "$f";; esac; done\n'
        f"if [ -d {new}/{PREFIX} ]; then (cd {new}/{PREFIX} && tar -cf - .) | (cd {v} && tar -xf -); fi\n"
        f"rm -rf {site}.old {new} {quote(bundle)}\n"
    )


def _dist_info(site: Path, wheel: Path) -> Path:
    """The .dist-info folder a wheel brings: ``<name>-<version>.dist-info`` from its file name."""
    name, version = wheel.name.split("-")[:2]
    return site / f"{name}-{version}.dist-info"


def _same_python(platform: HostPlatform) -> bool:
    """Byte-code is compiled here only for the host's own Python version (magic number)."""
    return sys.implementation.name == "cpython" and sys.version_info[:2] == platform.python


def _pack(tree: Path, dest: Path) -> None:
    """A gzip'd tar of ``tree``'s folders, in name order, owned by nobody in particular (the
    host's user unpacks it as its own), modes and timestamps kept (byte-code checks those)."""

    def owned_by_nobody(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with contextlib.closing(tarfile.open(dest, "w:gz", compresslevel=6, format=tarfile.GNU_FORMAT)) as tar:  # fmt: skip
        for top in (SITE, PREFIX):
            root = tree / top
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(tree)), recursive=False,
                        filter=owned_by_nobody)  # fmt: skip
