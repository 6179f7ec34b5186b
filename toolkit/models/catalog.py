"""The models toolkit holds: the workstation's store and the files placed on each host.

A host costs one round trip per question: a shell snippet lists its placed models (size, the
record of their last verification) and the service definitions that name each file, so
``models remove`` can refuse a model a service still uses. ``models verify`` hashes them there
(openssl or Python, as placement does) and compares with the name, which is the sha256.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.hosts.connection import Connection, quote
from toolkit.hosts.shell import PRELUDE, data_dir_assignment
from toolkit.models.gguf import read_gguf, system_role_supported
from toolkit.models.store import ModelStore

MODELS_GLOB = '"$TK_DATA"/models/sha256-*.gguf'
DEFINITIONS = (
    '"$TK_DATA"/supervisor/programs/*.conf "$TK_DATA"/systemd/*.service "$TK_DATA"/termux/*/run'
)
_SERVICE_OF = (
    (re.compile(r"/supervisor/programs/([^/]+)\.conf$"), 1),
    (re.compile(r"/systemd/toolkit-([^/]+)\.service$"), 1),
    (re.compile(r"/termux/([^/]+)/run$"), 1),
)


@dataclass
class PlacedModel:
    where: str  # "workstation" or the host's inventory name
    sha256: str
    size: int
    name: str = ""  # the file's name where it came from, when the workstation knows it
    used_by: list[str] = field(default_factory=list)  # services whose definition names it

    def as_dict(self) -> dict:
        return asdict(self)


def workstation_models(store: ModelStore) -> list[PlacedModel]:
    if not store.blob_dir.is_dir():
        return []
    return [
        PlacedModel("workstation", path.name, path.stat().st_size, store.name_of(path.name) or "")
        for path in sorted(store.blob_dir.iterdir())
        if path.is_file() and re.fullmatch(r"[0-9a-f]{64}", path.name)
    ]


def _script(data_dir: str | None, body: str) -> str:
    return f"{PRELUDE}\n{data_dir_assignment(data_dir)}\n{body}"


LIST_SNIPPET = f"""for tk_f in {MODELS_GLOB}; do
  [ -f "$tk_f" ] || continue
  printf 'model %s %s\\n' "$(basename "$tk_f")" "$(tk_stat "$tk_f")"
  for tk_d in {DEFINITIONS}; do
    [ -f "$tk_d" ] && grep -qF "$tk_f" "$tk_d" && printf 'user %s\\n' "$tk_d"
  done
done; true"""


def host_models(host: str, conn: Connection, data_dir: str | None) -> list[PlacedModel]:
    out = conn.check(_script(data_dir, LIST_SNIPPET), "listing models")
    found: list[PlacedModel] = []
    for line in out.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "model":
            name, size, _mtime = (rest.split() + ["0", "0"])[:3]
            sha = name.removeprefix("sha256-").removesuffix(".gguf")
            found.append(PlacedModel(host, sha, int(size) if size.isdigit() else 0))
        elif kind == "user" and found:
            service = _service_name(rest.strip())
            if service and service not in found[-1].used_by:
                found[-1].used_by.append(service)
    return found


def _service_name(definition: str) -> str | None:
    for pattern, group in _SERVICE_OF:
        match = pattern.search(definition)
        if match:
            return match[group]
    return None


def verify_host(conn: Connection, data_dir: str | None) -> dict[str, bool]:
    """sha256 of each placed model -> whether its content still hashes to its name."""
    snippet = (
        f'for tk_f in {MODELS_GLOB}; do [ -f "$tk_f" ] || continue; '
        'printf \'%s %s\\n\' "$(basename "$tk_f")" "$(tk_sha_big "$tk_f")"; done; true'
    )
    out = conn.check(_script(data_dir, snippet), "hashing the placed models", timeout=3600)
    result = {}
    for line in out.stdout.splitlines():
        name, _, actual = line.partition(" ")
        sha = name.removeprefix("sha256-").removesuffix(".gguf")
        result[sha] = actual.strip() == sha
    return result


def resolve(store: ModelStore, name: str, known: list[PlacedModel]) -> str:
    """The sha256 a user means by ``name``: a sha256 prefix (8 hex digits or more) or the file
    name the workstation remembers."""
    shas = {m.sha256 for m in known}
    if re.fullmatch(r"[0-9a-f]{8,64}", name):
        matches = sorted(s for s in shas if s.startswith(name))
    else:
        matches = sorted({m.sha256 for m in known if m.name == name})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ToolkitError(f"no model {name!r} here (give a sha256 prefix or a file name)")
    raise ToolkitError(f"{name!r} is ambiguous: {', '.join(m[:12] for m in matches)}")


def remove_from_host(conn: Connection, data_dir: str | None, sha256: str) -> None:
    path = f'"$TK_DATA"/models/{quote(f"sha256-{sha256}.gguf")}'
    conn.check(_script(data_dir, f"rm -f {path} {path}.toolkit"), "removing the model")


def describe(path: Path) -> dict:
    """What ``models inspect`` shows of a GGUF file."""
    info = read_gguf(path)
    p = info.parameters
    return {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "architecture": info.architecture,
        "name": info.name,
        "parameters": p.get("general.size_label") or p.get("general.parameter_count"),
        "trained_context": info.context_length,
        "quantization": info.file_type,
        "chat_template": info.chat_template is not None,
        "system_role": system_role_supported(info.chat_template),
    }
