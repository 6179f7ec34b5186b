"""Benchmark: toolkit against ansible-playbook converging the same site on 1, 4 and 16 SSH hosts.

Not a test. Needs root, openssh-server and sudo (it starts the loopback sshd bed of
tests/sshbed.py: one sshd, OS user and home per host) and network access to PyPI: ansible-core
is installed into a throwaway virtualenv (``--ansible-venv``, made when missing); toolkit
resolves its hosts' virtualenv once on the workstation and ships it (resources/venv_bundle.py),
Ansible's playbook runs pip on every host.

The site: one model (a small generated file, its real sha256) served by the llama-server stand-in
(tests/llama_standin.py), supervisord, and toolkit's proxy in front. Ansible runs
bench/ansible/fleet.yml, which lays down the same files (same sha256: checked on a host after
each tool), renders the same units from toolkit's templates/ with the variables toolkit computes
for each host, starts supervisord and sends one chat request through the proxy, as toolkit does.

For each host count: a first apply on clean hosts, then a no-op re-apply, for each tool. Prints
wall seconds, toolkit/Ansible ratios, SSH logins per host (from sshd's log) and toolkit's SSH
round trips per host (its ``--json`` host events carry ``round_trips``). Target: a no-op
re-apply at 16 hosts in at most a tenth of Ansible's time, one round trip per host.

    python bench/fleet.py [--hosts 1,4,16] [--ansible-venv DIR] [--skip-ansible]
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.sshbed import BedHost, SSHBed  # noqa: E402
from toolkit.assets import proxy_dir, templates_dir  # noqa: E402
from toolkit.desired import HEALTH_CHECK, design_host, routes_variables  # noqa: E402
from toolkit.hosts.facts import Facts  # noqa: E402
from toolkit.resources.runtime import proxy_requirements  # noqa: E402
from toolkit.site import load_site  # noqa: E402

STANDIN = REPO / "tests" / "llama_standin.py"
ANSIBLE_PLAYBOOK = REPO / "bench" / "ansible" / "fleet.yml"
# Files both tools must leave with the same content (relative to the data dir).
COMPARED = [
    "proxy/routes.yml",
    "supervisor/supervisord.conf",
    "supervisor/programs/engine-tiny.conf",
    "supervisor/programs/proxy.conf",
    "bin/health_check.py",
    "app/proxy/app.py",
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_ansible(venv: Path) -> Path:
    playbook = venv / "bin" / "ansible-playbook"
    if not playbook.exists():
        print(f"installing ansible-core into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin/python"), "-m", "pip", "install", "-q", "ansible-core"], check=True
        )
    version = subprocess.run([str(playbook), "--version"], capture_output=True, text=True)
    print(version.stdout.splitlines()[0], flush=True)
    return playbook


class Site:
    """The benchmark's playbook, model and an inventory that serves both tools."""

    def __init__(self, root: Path, hosts: list[BedHost]):
        self.root = root
        self.model = root / "tiny.gguf"
        self.model.write_bytes(b"GGUF" + os.urandom(256 * 1024))
        self.sha256 = hashlib.sha256(self.model.read_bytes()).hexdigest()
        self.playbook = root / "fleet.yml"
        self.playbook.write_text(
            yaml.safe_dump(
                [
                    {
                        "name": "fleet",
                        "hosts": "bed",
                        "runtimes": {"llamacpp": {"install": "present", "path": str(STANDIN)}},
                        "models": [
                            {
                                "name": "tiny",
                                "runtime": "llamacpp",
                                "source": {"path": str(self.model)},
                                "sha256": self.sha256,
                                "port": "{{ engine_port }}",
                                "args": {"ctx_size": 2048, "parallel": 2},
                            }
                        ],
                        "proxy": {"port": "{{ proxy_port }}"},
                    }
                ],
                sort_keys=False,
            )
        )
        self.hosts = hosts
        self.ports = {h.name: (free_port(), free_port()) for h in hosts}

    def data_dir(self, host: BedHost) -> str:
        return f"{host.home}/.local/share/toolkit"

    def inventory(self, hosts: list[BedHost]) -> Path:
        """One Ansible YAML inventory for both tools: toolkit ignores the tk_* variables."""
        entries = {}
        for host in hosts:
            proxy_port, engine_port = self.ports[host.name]
            entries[host.name] = {
                **host.inventory_vars(),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={host.known_hosts}",
                "ansible_python_interpreter": "/usr/bin/python3",
                "proxy_port": proxy_port,
                "engine_port": engine_port,
            }
        path = self.root / f"hosts-{len(hosts)}.yml"
        path.write_text(yaml.safe_dump({"all": {"children": {"bed": {"hosts": entries}}}}))
        site = load_site(self.playbook, path)
        for play, targets in site.targets():
            for host in targets:
                entries[host.name].update(self.ansible_vars(site.play_for(play, host), host))
        path.write_text(yaml.safe_dump({"all": {"children": {"bed": {"hosts": entries}}}}))
        return path

    def ansible_vars(self, play, host) -> dict:
        """What toolkit would lay down on this host, as variables for the Ansible playbook."""
        bed = next(h for h in self.hosts if h.name == host.name)
        data = self.data_dir(bed)
        facts = Facts(data_dir=data, python3="/usr/bin/python3", uid=1000, home=str(bed.home))
        design = design_host(play, host, facts)
        programs = []
        for definition in design.manager.definitions(design.services, data, host.name):
            if "service" in definition.variables:
                service = definition.variables["service"]
                programs.append(
                    {
                        "data_dir": data,
                        "host": host.name,
                        "service": {**asdict(service), "command_line": service.command_line},
                        "environment": definition.variables["environment"],
                    }
                )
        return {
            "tk_data_dir": data,
            "tk_python3": "/usr/bin/python3",
            "tk_model_src": str(self.model),
            "tk_model_sha256": self.sha256,
            "tk_health_check": str(HEALTH_CHECK),
            "tk_templates": str(templates_dir()),
            "tk_proxy_dir": str(proxy_dir()),
            "tk_requirements": sorted({"supervisor", *proxy_requirements()}),
            "tk_routes_vars": routes_variables(host.name, design.served),
            "tk_supervisord_vars": {"data_dir": data, "host": host.name},
            "tk_programs": programs,
        }


def run(argv: list[str], env: dict, what: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        print(f"  {what} FAILED (exit {result.returncode}):\n{result.stdout[-3000:]}"
              f"\n{result.stderr[-2000:]}", flush=True)  # fmt: skip
    return seconds, result


def round_trips(result: subprocess.CompletedProcess) -> list[int]:
    trips = []
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "host":
                trips.append(event["round_trips"])
    return trips


def contents(site: Site, host: BedHost) -> dict[str, bytes]:
    data = Path(site.data_dir(host))
    found = {}
    for rel in [*COMPARED, f"models/sha256-{site.sha256}.gguf"]:
        path = data / rel
        found[rel] = path.read_bytes() if path.exists() else b"(missing)"
    return found


def reset(site: Site, hosts: list[BedHost], toolkit_env: dict, inventory: Path) -> None:
    """Stop supervisord (both tools use the same data dir and config) and empty the homes."""
    subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "down", str(site.playbook), "-i", str(inventory)],
        capture_output=True, env=toolkit_env, timeout=600,
    )  # fmt: skip
    for host in hosts:
        host.clean_home()


def end_ssh_masters(control_dir: Path) -> None:
    """End the OpenSSH ControlPersist masters Ansible left, by pid."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(control_dir) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,4,16", help="host counts, comma-separated")
    parser.add_argument(
        "--ansible-venv", type=Path, default=Path(tempfile.gettempdir()) / "toolkit-bench-ansible"
    )
    parser.add_argument("--skip-ansible", action="store_true")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the sshd bed and every service are stopped by pid
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    counts = [int(n) for n in args.hosts.split(",")]
    ansible = None if args.skip_ansible else ensure_ansible(args.ansible_venv)

    root = Path(tempfile.mkdtemp(prefix="toolkit-bench-fleet-"))
    rows = []
    try:
        with SSHBed(count=max(counts)) as bed:
            print(f"sshd bed: {len(bed.hosts)} hosts in {bed.started_in:.1f} s", flush=True)
            site = Site(root, bed.hosts)
            toolkit_env = {
                **os.environ,
                "TOOLKIT_CACHE_DIR": str(root / "cache"),
                "TOOLKIT_STATE_DIR": str(root / "state"),
            }
            control_dir = root / "cp"
            control_dir.mkdir()
            ansible_env = {
                **os.environ,
                "ANSIBLE_HOME": str(root / "ansible-home"),
                "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_FORKS": str(max(counts)),
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_NOCOLOR": "1",
            }
            for n in counts:
                hosts = bed.hosts[:n]
                inventory = site.inventory(hosts)
                row = {"hosts": n}
                reset(site, hosts, toolkit_env, inventory)
                toolkit = [sys.executable, "-m", "toolkit.cli", "apply", str(site.playbook),
                           "-i", str(inventory), "--json", "--forks", "20"]  # fmt: skip
                logins = sum(h.logins() for h in hosts)
                row["toolkit_first"], first = run(toolkit, toolkit_env, "toolkit first apply")
                row["toolkit_noop"], noop = run(toolkit, toolkit_env, "toolkit no-op apply")
                row["toolkit_logins"] = (sum(h.logins() for h in hosts) - logins) / n / 2
                row["trips_first"] = max(round_trips(first), default=0)
                row["trips_noop"] = round_trips(noop)
                reference = contents(site, hosts[0])
                if ansible is not None:
                    reset(site, hosts, toolkit_env, inventory)
                    command = [str(ansible), "-i", str(inventory), str(ANSIBLE_PLAYBOOK)]
                    logins = sum(h.logins() for h in hosts)
                    row["ansible_first"], one = run(command, ansible_env, "ansible first apply")
                    row["ansible_noop"], last = run(command, ansible_env, "ansible no-op apply")
                    if one.returncode or last.returncode:
                        row["ansible_first"] = row["ansible_noop"] = None  # no ratio to print
                        for log in sorted(Path(site.data_dir(hosts[0]), "logs").glob("*.log")):
                            print(f"  {log}:\n{log.read_text(errors='replace')[-1500:]}")
                    row["ansible_logins"] = (sum(h.logins() for h in hosts) - logins) / n / 2
                    recap = [ln for ln in last.stdout.splitlines() if "changed=" in ln]
                    row["ansible_noop_changed"] = sum(
                        int(ln.split("changed=")[1].split()[0]) for ln in recap
                    )
                    theirs = contents(site, hosts[0])
                    row["same_files"] = theirs == reference
                    for rel in reference:
                        if theirs[rel] != reference[rel]:
                            print(f"  differs after Ansible: {rel}", flush=True)
                            print("".join(difflib.unified_diff(
                                reference[rel].decode(errors="replace").splitlines(True),
                                theirs[rel].decode(errors="replace").splitlines(True),
                                "toolkit", "ansible")), flush=True)  # fmt: skip
                    end_ssh_masters(control_dir)
                reset(site, hosts, toolkit_env, inventory)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'hosts':>5} | {'toolkit first':>13} {'no-op':>7} | {'ansible first':>13} {'no-op':>7}"
          f" | {'ratio first':>11} {'no-op':>7} | round trips/host (no-op) | logins/run/host")  # fmt: skip
    for row in rows:
        a_first, a_noop = row.get("ansible_first"), row.get("ansible_noop")
        ratio_first = f"{row['toolkit_first'] / a_first:.3f}" if a_first else "-"
        ratio_noop = f"{row['toolkit_noop'] / a_noop:.3f}" if a_noop else "-"
        trips = sorted(set(row["trips_noop"]))
        print(
            f"{row['hosts']:>5} | {row['toolkit_first']:>12.1f}s {row['toolkit_noop']:>6.2f}s | "
            f"{(f'{a_first:.1f}s' if a_first else '-'):>13} "
            f"{(f'{a_noop:.2f}s' if a_noop else '-'):>7} | {ratio_first:>11} {ratio_noop:>7} | "
            f"{','.join(map(str, trips)):>24} | toolkit {row['toolkit_logins']:.0f}, "
            f"ansible {row.get('ansible_logins', '-')}"
        )
    for row in rows:
        if "same_files" in row:
            print(f"{row['hosts']} hosts: same files and checksums after both tools: "
                  f"{row['same_files']}; Ansible no-op changed={row['ansible_noop_changed']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
