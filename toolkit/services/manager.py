"""What a service manager offers toolkit: its definition files, a status probe, control, and
what ``toolkit status`` / ``toolkit logs`` need: each service's state and where its log is."""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.services.definition import Service


@dataclass
class ServiceStatus:
    daemon_up: bool  # the manager itself answers (always true for systemd)
    running: set[str] = field(default_factory=set)  # service names running now


STATES = ("starting", "running", "restarting", "crashed", "stopping", "stopped")
STATE_MARK = "@svc"  # the first field of each line a state script prints
CURSOR_MARK = "@cursor "  # the first line a log script prints for files (the next read's start)


@dataclass
class ServiceState:
    """One service as its manager sees it now. Unknown values are None (runit keeps no restart
    count nor exit status)."""

    name: str
    state: str  # one of STATES
    pid: int | None = None
    uptime_s: int | None = None
    restarts: int | None = None  # automatic restarts since the manager started it
    last_exit: str = ""  # "exit 2", "signal SIGKILL" (the last time it ended)


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_states(output: str) -> dict[str, ServiceState]:
    """The lines of a ``state_script``: ``@svc NAME STATE PID UPTIME RESTARTS EXIT`` (tabs;
    ``-`` for unknown)."""
    states = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) < 7 or fields[0] != STATE_MARK:
            continue
        name, state, pid, uptime, restarts, last_exit = fields[1:7]
        states[name] = ServiceState(
            name,
            state if state in STATES else "stopped",
            _number(pid),
            _number(uptime),
            _number(restarts),
            "" if last_exit == "-" else last_exit,
        )
    return states


def file_log_script(path: str, lines: int, cursor: str | None) -> str:
    """Read a log file: its last ``lines`` lines, or what was written after byte ``cursor``.
    Prints ``@cursor SIZE`` first; reads up to that size only, so the next read misses nothing.
    A file shorter than the cursor was rotated: it is read from its start."""
    size = f'tk_size=$(wc -c < {path} 2>/dev/null | tr -d " "); tk_size=${{tk_size:-0}}'
    if cursor is None or not cursor.isdigit():
        read = f"head -c $tk_size {path} 2>/dev/null | tail -n {int(lines)}"
    else:
        read = (
            f"tk_from={int(cursor)}; [ $tk_size -lt $tk_from ] && tk_from=0; "
            f"tail -c +$((tk_from+1)) {path} 2>/dev/null | head -c $((tk_size-tk_from))"
        )
    return f'{size}; echo "{CURSOR_MARK}$tk_size"; {read}'


@dataclass
class DefinitionFile:
    relpath: str  # under the host's data dir
    template: str
    variables: dict
    mode: int = 0o644


class ServiceManager:
    name: str
    restarts_redefined = False  # does loading changed definitions restart those services?
    package_manager: str | None = None  # "pkg" | "apt" | "brew": installs ``packages``
    packages: tuple[str, ...] = ()  # system packages the manager (and toolkit with it) needs

    @property
    def kind(self) -> str:
        """How the services manifest names this manager (enough to rebuild it)."""
        return self.name

    def definitions(
        self, services: list[Service], data_dir: str, host: str
    ) -> list[DefinitionFile]:
        raise NotImplementedError

    def probe(self, services: list[Service]) -> str:
        raise NotImplementedError

    def parse_status(self, observed: str, services: list[Service]) -> ServiceStatus:
        raise NotImplementedError

    def converge_script(
        self,
        status: ServiceStatus,
        services: list[Service],
        start: list[str],
        restart: list[str],
        redefined: bool,
    ) -> str:
        """Shell that makes the manager load new definitions, start and restart services."""
        raise NotImplementedError

    def stop_script(self, services: list[Service]) -> str:
        """Shell that stops every service and the manager toolkit started, if any."""
        raise NotImplementedError

    def remove_script(self, services: list[Service]) -> str:
        """Shell that stops these services (waiting until they have) and removes their
        definitions, leaving every other service as it is (a model's old engine after a switch)."""
        raise NotImplementedError

    # -- what status and logs read ------------------------------------------------------------

    def state_script(self, names: str) -> str:
        """Shell printing one ``@svc`` line per service (see ``parse_states``). ``names`` is a
        shell word list: literal quoted names, or an unquoted variable holding them (service
        names are letters, digits and "-" only). Needs $TK_DATA."""
        raise NotImplementedError

    def log_location(self, service: Service, data_dir: str) -> str:
        """Where the service's output goes, as a person would look for it."""
        raise NotImplementedError

    def log_script(self, name: str, lines: int, cursor: str | None = None) -> str:
        """Shell printing the service's last ``lines`` log lines, or, given the cursor a
        previous read returned, what came after it; ``read_log`` splits the answer. ``name``
        is a shell word: ``quote(name)``, or ``"$var"``. Needs $TK_DATA."""
        raise NotImplementedError

    def read_log(self, output: str) -> tuple[str, str | None]:
        """(log text, cursor for the next read) from a ``log_script``'s output."""
        first, _, rest = output.partition("\n")
        if not first.startswith(CURSOR_MARK):
            return output, None
        return rest, first[len(CURSOR_MARK) :].strip()
