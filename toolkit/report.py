"""What a run prints: a live line per host and step, the recap, and the run history.

Console output looks like Ansible's (colour on a TTY, unless ``NO_COLOR`` is set or ``TERM=dumb``);
``--json`` prints one JSON event a line instead. ``-v`` adds each step's duration, ``-vv`` every
command run on a host with its exit code and duration, ``-vvv`` the commands' text and output.
Every run is appended to ``$XDG_STATE_HOME/toolkit/history.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import click

from toolkit.credentials import MADE_THIS_RUN, generated_key_path
from toolkit.hosts.facts import Facts
from toolkit.runtimes import RUNTIMES
from toolkit.workstation import state_dir


def use_color(stream) -> bool:
    """Colour on a terminal, unless NO_COLOR (https://no-color.org) or TERM=dumb says no."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def _gib(kb: int) -> str:
    return f"{kb / 1024 / 1024:.1f} GiB"


class Reporter:
    def __init__(self, json_events: bool = False, stream=None, verbosity: int = 0):
        self.json = json_events
        self.stream = stream or sys.stdout
        self.color = not json_events and use_color(self.stream)
        self.verbosity = verbosity
        self.lock = threading.Lock()
        self.bars = None  # live transfer bars (toolkit.progress), on a terminal only

    # -- output primitives ----------------------------------------------------------------

    def _echo(self, text: str = "", fg: str | None = None, bold: bool = False) -> None:
        line = click.style(text, fg=fg, bold=bold) if self.color else text
        with self.lock:
            if self.bars is not None and self.bars.live:
                self.bars.write(line)  # above the bars, which stay at the bottom
            else:
                click.echo(line, file=self.stream)

    def _event(self, kind: str, **fields) -> None:
        with self.lock:
            self.stream.write(json.dumps({"event": kind, "time": time.time(), **fields}) + "\n")
            self.stream.flush()

    # -- engine callbacks --------------------------------------------------------------------

    def play(self, play, hosts) -> None:
        if self.json:
            self._event("play", play=play.name, hosts=[h.name for h in hosts])
            return
        title = f"PLAY [{play.name}] "
        self._echo(title + "*" * max(3, 72 - len(title)), bold=True)

    def facts(self, host: str, facts: Facts, design) -> None:
        if self.json:
            self._event("facts", host=host, facts=facts.as_dict())
            return
        gpus = ", ".join(facts.gpus) or "no GPU"
        distro = f"{facts.distro} {facts.distro_version}".strip() or facts.os
        runtimes = "".join(
            f"; {RUNTIMES[name].label}: {install.strategy}"
            + (f" ({install.reason})" if install.reason else "")
            for name, install in design.installs.items()
        )
        self._echo(
            f"{host}: {distro} {facts.arch}, {facts.cpus} CPUs, {_gib(facts.mem_kb)} RAM, "
            f"{gpus}; services: {design.manager.name}{runtimes}; data: {facts.data_dir}"
            + ("; offline: everything shipped from here" if design.offline else "")
        )

    def change(self, host: str, change, planned: bool) -> None:
        if self.json:
            self._event("change", host=host, resource=change.resource.id, summary=change.summary,
                        planned=planned, diff=change.diff)  # fmt: skip
            return
        word = "would change" if planned else "change"
        self._echo(f"{host}: {word:>12}  {change.resource.id}: {change.summary}", fg="yellow")
        if change.diff:
            with self.lock:
                for line in change.diff.splitlines():
                    colour = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1])
                    click.echo(
                        click.style(line, fg=colour) if self.color else line, file=self.stream
                    )

    def step(self, host: str, change) -> None:
        if self.json:
            self._event("apply", host=host, resource=change.resource.id, summary=change.summary)
        else:
            self._echo(f"{host}: {'applying':>12}  {change.resource.id}")

    def step_done(self, host: str, change, seconds: float) -> None:
        if self.verbosity < 1:
            return
        if self.json:
            self._event(
                "applied", host=host, resource=change.resource.id, seconds=round(seconds, 3)
            )
        else:
            self._echo(f"{host}: {'done':>12}  {change.resource.id} in {seconds:.2f} s")

    def traced(self, host: str, conn):
        """``conn``, printing each command it runs from -vv on (the connection itself under -v)."""
        return CommandTrace(conn, host, self) if self.verbosity >= 2 else conn

    def command(self, host: str, what: str, script: str, rc, seconds: float, output: str) -> None:
        if self.json:
            self._event("command", host=host, what=what, rc=rc, seconds=round(seconds, 3),
                        **({"script": script, "output": output} if self.verbosity >= 3 else {}))  # fmt: skip
            return
        first = script.strip().splitlines()[0] if script.strip() else ""
        lines = script.count("\n") + 1
        shown = first if lines == 1 else f"{first[:60]} ... ({lines} lines)"
        status = "" if rc is None else f"rc={rc} "
        self._echo(f"{host}: {what:>12}  {status}{seconds:.2f} s  {shown}", fg="cyan")
        if self.verbosity >= 3:
            with self.lock:
                for line in script.splitlines():
                    click.echo(f"{host}: {'$':>12}  {line}", file=self.stream)
                for line in output.splitlines():
                    click.echo(f"{host}: {'>':>12}  {line}", file=self.stream)

    def step_text(self, host: str, text: str) -> None:
        if self.json:
            self._event("step", host=host, text=text)
        else:
            self._echo(f"{host}: {'':>12}  {text}")

    def progress(self, host: str, label: str):
        """A callback for long transfers: a live bar on a terminal; elsewhere a line at most
        every 10% (or every 5 s), or a JSON event."""
        if self.color:
            if self.bars is None:
                from toolkit.progress import LiveBars

                self.bars = LiveBars(self.stream)
            return self.bars.bar(host, label)
        state = {"shown": -1, "at": 0.0}

        def update(done: int, total: int | None) -> None:
            now = time.monotonic()
            step = int(done * 10 / total) if total else -1
            if step == state["shown"] and now - state["at"] < 5:
                return
            state["shown"], state["at"] = step, now
            if self.json:
                self._event("progress", host=host, label=label, done=done, total=total)
            else:
                of = f" of {total / 1e6:.0f} MB ({done * 100 // total}%)" if total else ""
                self._echo(f"{host}: {'':>12}  {label}: {done / 1e6:.0f} MB{of}")

        return update

    def host_done(self, result) -> None:
        if self.json:
            self._event("host", host=result.host, changed=result.changed, ok=result.ok,
                        failed=result.failed, unreachable=result.unreachable,
                        error=result.error, verify=result.verify,
                        switches=result.switches, round_trips=result.round_trips,
                        seconds=round(result.seconds, 3))  # fmt: skip
            return
        if self.verbosity >= 1:
            self._echo(
                f"{result.host}: {'finished':>12}  in {result.seconds:.2f} s, "
                f"{result.round_trips} round trip(s)"
            )
        if result.failed:
            word = "UNREACHABLE" if result.unreachable else "FAILED"
            first, _, details = result.error.partition("\n")
            more = " (its log is in the recap below)" if details else ""
            self._echo(f"{result.host}: {word}: {first}{more}", fg="red", bold=True)
            return
        for model, how in result.switches.items():
            self._echo(f"{result.host}: {'switched':>12}  {model}: {how}", fg="green")
        for model, check in result.verify.items():
            self._echo(
                f"{result.host}: {'verified':>12}  {model}: answered in {check['latency_s']:.2f} s, "
                f"{check['tokens']} tokens, {check['tokens_per_s']} tokens/s",
                fg="green",
            )

    # -- end of run ----------------------------------------------------------------------------

    def recap(self, results, seconds: float, check: bool) -> None:
        if self.json:
            self._event("recap", seconds=round(seconds, 3), check=check, hosts=[
                {"host": r.host, "ok": r.ok, "changed": changed_count(r, check),
                 "failed": int(r.failed), "notices": r.design.notices if r.design else []}
                for r in results
            ])  # fmt: skip
            return
        self._echo()
        self._echo("PLAY RECAP " + "*" * 61, bold=True)
        for r in results:
            count = changed_count(r, check)
            colour = "red" if r.failed else "yellow" if count else "green"
            changed = "would change" if check else "changed"
            self._echo(
                f"{r.host:<24} ok={r.ok:<4} {changed}={count:<4} failed={int(r.failed):<3} "
                f"unreachable={int(r.unreachable):<3} {r.seconds:6.1f} s",
                fg=colour,
            )
            if r.failed and "\n" in r.error:  # a service that exited: how, and its log's end
                for line in r.error.splitlines():
                    self._echo(f"{'':<24} {line}", fg="red" if not line.startswith("  |") else None)
            for model, v in r.verify.items():
                if "latency_s" in v:
                    self._echo(
                        f"{'':<24} {model}: {v.get('kind', 'chat')} {v['latency_s'] * 1000:.0f} ms, "
                        f"{v['tokens_per_s']} tokens/s"
                    )
            for model, how in r.switches.items():
                self._echo(f"{'':<24} {model}: {how}")
            for notice in r.design.notices if r.design else []:
                self._echo(f"{'':<24} {notice}", fg="red" if notice.startswith("warning") else None)
        for host, key in sorted(MADE_THIS_RUN.items()):
            # The one place a generated key is ever shown: the terminal of the run that made it.
            self._echo(
                f"\nAPI key made for {host} (shown once; kept 0600 in {generated_key_path(host)}):"
                f"\n  {key}",
                bold=True,
            )
        MADE_THIS_RUN.clear()
        self._echo(f"\n{len(results)} host(s) in {seconds:.1f} s")

    def endpoints(self, results) -> None:
        if self.json:
            return
        for r in results:
            if r.failed or r.design is None or r.design.proxy_port is None or not r.design.served:
                continue
            local = r.host in ("localhost", "127.0.0.1") or not r.address
            address = "127.0.0.1" if local else r.address
            if ":" in address:  # an IPv6 address
                address = f"[{address}]"
            base = f"http://{address}:{r.design.proxy_port}/v1"
            model = r.design.served[0].model.name
            self._echo(f"\nEndpoint on {r.host}: {base}  (models: "
                       + ", ".join(e.model.name for e in r.design.served) + ")", bold=True)  # fmt: skip
            self._echo(
                f"  curl {base}/completions -H 'Content-Type: application/json' \\\n"
                f'    -d \'{{"model": "{model}", "prompt": "The capital of France is", '
                f'"max_tokens": 16}}\''
            )


def changed_count(result, check: bool) -> int:
    """What the recap calls changed: the changes planned under --check, else those applied (a
    failed apply stops at the failing step, and nothing after it was written)."""
    return result.changed if check else getattr(result, "applied", result.changed)


class CommandTrace:
    """A Connection that reports every command it runs and file it puts, with its duration."""

    def __init__(self, conn, host: str, reporter: Reporter):
        self._conn, self._host, self._reporter = conn, host, reporter

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    def run(self, script: str, **kwargs):
        started = time.monotonic()
        result = self._conn.run(script, **kwargs)
        output = (result.stdout + result.stderr) if self._reporter.verbosity >= 3 else ""
        self._reporter.command(
            self._host, "run", script, result.rc, time.monotonic() - started, output
        )
        return result

    def check(self, script: str, what: str, **kwargs):
        from toolkit.hosts.connection import Connection

        return Connection.check(self, script, what, **kwargs)  # through run() above

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        started = time.monotonic()
        self._conn.put(local, remote, mode)
        self._reporter.command(self._host, "put", f"{local} -> {remote}", None,
                               time.monotonic() - started, "")  # fmt: skip

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        started = time.monotonic()
        self._conn.put_bytes(data, remote, mode)
        self._reporter.command(self._host, "put", f"{len(data)} bytes -> {remote}", None,
                               time.monotonic() - started, "")  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._conn.close()


def history_path() -> Path:
    return state_dir() / "history.jsonl"


def append_history(command: str, playbook: str, results, seconds: float) -> None:
    entry = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "playbook": playbook,
        "hosts": [r.host for r in results],
        "changed": sum(changed_count(r, command.endswith("--check")) for r in results),
        "failed": sum(int(r.failed) for r in results),
        "seconds": round(seconds, 2),
    }
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(entry) + "\n")


def read_history(limit: int = 20) -> list[dict]:
    try:
        lines = history_path().read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines[-limit:] if line.strip()]
