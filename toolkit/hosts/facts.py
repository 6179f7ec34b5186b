"""Facts about a host, read by one POSIX shell probe (no Python needed on the target).

The probe prints ``key=value`` lines; ``parse_facts`` turns them into ``Facts``. The same script
is the first part of the batched probe that also reads every resource's current state, so a
converged host costs one round trip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from toolkit.hosts.connection import quote

# $TK_DATA is set by the caller (engine.probe_script) before this runs.
FACTS_SCRIPT = r"""
tk_fact() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n\t' '  ')"; }
tk_fact os "$(uname -s 2>/dev/null)"
tk_fact arch "$(uname -m 2>/dev/null)"
tk_fact kernel "$(uname -r 2>/dev/null)"
if [ -r /etc/os-release ]; then
  tk_fact distro "$(. /etc/os-release; printf '%s' "$ID")"
  tk_fact distro_version "$(. /etc/os-release; printf '%s' "$VERSION_ID")"
fi
tk_fact hostname "$(uname -n 2>/dev/null)"
tk_fact user "$(id -un 2>/dev/null)"
tk_fact uid "$(id -u 2>/dev/null)"
tk_fact home "$HOME"
tk_fact data_dir "$TK_DATA"
tk_fact ssh_address "$(printf '%s' "$SSH_CONNECTION" | cut -d' ' -f3)"
if [ -n "$TERMUX_VERSION" ] || [ -d /data/data/com.termux/files/usr ]; then
  tk_fact termux 1
  tk_fact prefix "${PREFIX:-/data/data/com.termux/files/usr}"
fi
if [ -d /run/systemd/system ]; then tk_fact systemd_system 1; fi
if [ -n "$XDG_RUNTIME_DIR" ] && [ -S "$XDG_RUNTIME_DIR/systemd/private" ]; then
  tk_fact systemd_user 1
fi
tk_fact cpus "$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)"
if [ -r /proc/meminfo ]; then
  tk_fact mem_kb "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
  tk_fact mem_available_kb "$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
else
  tk_fact mem_kb "$(( $(sysctl -n hw.memsize 2>/dev/null || echo 0) / 1024 ))"
fi
tk_d="$TK_DATA"; while [ ! -d "$tk_d" ] && [ "$tk_d" != "/" ] && [ -n "$tk_d" ]; do tk_d=$(dirname "$tk_d"); done
tk_fact disk_free_kb "$(df -Pk "$tk_d" 2>/dev/null | awk 'NR==2 {print $4}')"
tk_fact python3 "$(command -v python3 2>/dev/null)"
tk_fact services "$(sed -n 's/^ *"name": "\([A-Za-z0-9-]*\)",*$/\1/p' "$TK_DATA/services.json" 2>/dev/null | tr '\n' ' ')"
if command -v nvidia-smi >/dev/null 2>&1; then
  tk_fact gpu_nvidia "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | paste -sd ';' -)"
fi
if command -v rocm-smi >/dev/null 2>&1; then
  tk_fact gpu_rocm "$(rocm-smi --showproductname 2>/dev/null | awk -F': ' '/Card series/ {print $2}' | paste -sd ';' -)"
fi
if [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then
  tk_fact gpu_apple "$(sysctl -n machdep.cpu.brand_string 2>/dev/null)"
fi
"""


def binaries_probe(names: list[str]) -> str:
    """Shell reporting where each program is (``path_<name>``) and its version line: the
    runtimes name the programs they look for (toolkit.runtimes.binaries)."""
    if not names:
        return ""
    listed = " ".join(quote(name) for name in names)
    return f"""for tk_bin in {listed}; do
  tk_path=$(command -v "$tk_bin" 2>/dev/null) || continue
  tk_fact "path_$tk_bin" "$tk_path"
  tk_fact "version_$tk_bin" "$("$tk_path" --version 2>&1 | grep -v '^$' | tail -n 1)"
done"""


@dataclass
class Facts:
    os: str = ""
    arch: str = ""
    kernel: str = ""
    distro: str = ""
    distro_version: str = ""
    hostname: str = ""
    user: str = ""
    uid: int = -1
    home: str = ""
    data_dir: str = ""
    ssh_address: str = ""  # this host's side of the SSH connection: where other hosts reach it
    termux: bool = False
    prefix: str = ""  # Termux's $PREFIX (its /usr)
    systemd_system: bool = False
    systemd_user: bool = False
    cpus: int = 0
    mem_kb: int = 0
    mem_available_kb: int = 0
    disk_free_kb: int = 0
    python3: str = ""
    gpus: list[str] = field(default_factory=list)
    binaries: dict[str, str] = field(default_factory=dict)  # name -> path
    versions: dict[str, str] = field(default_factory=dict)  # name -> version line
    # what runtimes' own probes found (Runtime.facts_probe): key (named after its runtime) -> value
    probed: dict[str, str] = field(default_factory=dict)
    # the services toolkit last applied here (its services.json): which slot serves a model
    services: list[str] = field(default_factory=list)

    @property
    def init_system(self) -> str:
        if self.termux:
            return "termux"
        if self.systemd_system:
            return "systemd"
        if self.systemd_user:
            return "systemd-user"
        return "none"

    def as_dict(self) -> dict:
        return {**asdict(self), "init_system": self.init_system}


_INT_FACTS = {"uid", "cpus", "mem_kb", "mem_available_kb", "disk_free_kb"}
_FLAG_FACTS = {"termux", "systemd_system", "systemd_user"}


def parse_facts(text: str) -> Facts:
    facts = Facts()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key in _INT_FACTS:
            setattr(facts, key, int(value) if value.lstrip("-").isdigit() else 0)
        elif key in _FLAG_FACTS:
            setattr(facts, key, value == "1")
        elif key.startswith("gpu_"):
            facts.gpus += [f"{key[4:]}: {g.strip()}" for g in value.split(";") if g.strip()]
        elif key == "services":
            facts.services = value.split()
        elif key.startswith("path_"):
            facts.binaries[key[5:]] = value
        elif key.startswith("version_"):
            facts.versions[key[8:]] = value
        elif key.startswith("probed_"):
            facts.probed[key[7:]] = value
        elif hasattr(facts, key):
            setattr(facts, key, value)
    return facts
