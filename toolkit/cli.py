"""The ``toolkit`` command: apply, down, facts, history, proxy."""

from __future__ import annotations

import json
import sys
import time

import click

from toolkit.errors import ToolkitError
from toolkit.resources.base import RunOptions

EXIT_OK, EXIT_ERROR, EXIT_PENDING = 0, 1, 2


def parse_extra_vars(pairs: tuple[str, ...]) -> dict:
    extra = {}
    for pair in pairs:
        if pair.startswith("{"):
            extra.update(json.loads(pair))
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="-e")
        extra[key] = value
    return extra


def common_site_options(func):
    func = click.option("-i", "--inventory", type=click.Path(exists=True, dir_okay=False),
                        help="Inventory file (default: inventory/localhost.yml).")(func)  # fmt: skip
    func = click.option("-l", "--limit", help="Only hosts matching this pattern.")(func)
    func = click.option("-e", "--extra-vars", "extra_vars", multiple=True,
                        help="key=value (or JSON); highest precedence.")(func)  # fmt: skip
    func = click.option("--json", "json_events", is_flag=True,
                        help="Print one JSON event a line.")(func)  # fmt: skip
    func = click.option("--accept-new-host-keys", is_flag=True,
                        help="Add unknown SSH host keys to known_hosts (changed keys are "
                        "still refused).")(func)  # fmt: skip
    func = click.option("-K", "--ask-become-pass", is_flag=True,
                        help="Ask for the sudo password of become hosts (else it is read from "
                        "$TOOLKIT_BECOME_PASSWORD). It is never logged.")(func)  # fmt: skip
    return func


def become_password(ask: bool) -> str | None:
    if not ask:
        return None  # the engine falls back to $TOOLKIT_BECOME_PASSWORD
    return click.prompt("BECOME password", hide_input=True, err=True)


def load(playbook: str, inventory: str | None, extra_vars: tuple[str, ...]):
    from toolkit.site import load_site

    return load_site(playbook, inventory, parse_extra_vars(extra_vars))


def fail(exc: Exception) -> None:
    click.echo(click.style(f"error: {exc}", fg="red"), err=True)
    sys.exit(EXIT_ERROR)


@click.group()
@click.version_option(package_name="toolkit")
def main() -> None:
    """Turn machines into verified OpenAI-compatible LLM endpoints."""


@main.command()
@click.argument("playbook", type=click.Path(exists=True, dir_okay=False))
@common_site_options
@click.option("--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("--diff", is_flag=True, help="Show unified diffs of rendered files.")
@click.option(
    "--verify-checksums",
    is_flag=True,
    help="Hash every placed model again instead of trusting its size/mtime record.",
)
@click.option("-f", "--forks", default=20, show_default=True, help="Hosts worked on at once.")
def apply(playbook, inventory, limit, extra_vars, json_events, accept_new_host_keys,
          ask_become_pass, check, diff, verify_checksums, forks):  # fmt: skip
    """Converge the hosts of PLAYBOOK. Exit 0: converged; 2: changes pending (--check); 1: error."""
    from toolkit.engine import Engine
    from toolkit.report import Reporter, append_history

    try:
        site = load(playbook, inventory, extra_vars)
    except ToolkitError as exc:
        fail(exc)
    options = RunOptions(
        check=check, diff=diff, verify_checksums=verify_checksums, forks=forks,
        host_key_policy="accept-new" if accept_new_host_keys else "strict",
    )  # fmt: skip
    reporter = Reporter(json_events)
    started = time.monotonic()
    try:
        password = become_password(ask_become_pass)
        results = Engine(site, options, reporter, limit, password).run()
    except ToolkitError as exc:
        fail(exc)
    seconds = time.monotonic() - started
    reporter.recap(results, seconds, check)
    if not check:
        reporter.endpoints(results)
    append_history("apply --check" if check else "apply", playbook, results, seconds)
    if any(r.failed for r in results):
        sys.exit(EXIT_ERROR)
    if check and any(r.changed for r in results):
        sys.exit(EXIT_PENDING)


@main.command()
@click.argument("playbook", type=click.Path(exists=True, dir_okay=False))
@common_site_options
def down(playbook, inventory, limit, extra_vars, json_events, accept_new_host_keys,
         ask_become_pass):  # fmt: skip
    """Stop every service PLAYBOOK's apply started (files and models stay)."""
    from toolkit.engine import stop_all
    from toolkit.report import Reporter, append_history

    try:
        site = load(playbook, inventory, extra_vars)
    except ToolkitError as exc:
        fail(exc)
    options = RunOptions(host_key_policy="accept-new" if accept_new_host_keys else "strict")
    reporter = Reporter(json_events)
    started = time.monotonic()
    results = stop_all(site, reporter, options, limit, become_password(ask_become_pass))
    for r in results:
        if not r.failed and not json_events:
            click.echo(f"{r.host}: stopped")
    append_history("down", playbook, results, time.monotonic() - started)
    if any(r.failed for r in results):
        sys.exit(EXIT_ERROR)


@main.command()
@click.argument("pattern", default="all")
@click.option("-i", "--inventory", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.option("--accept-new-host-keys", is_flag=True)
def facts(pattern, inventory, as_json, accept_new_host_keys):
    """Print the facts of the hosts matching PATTERN."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.assets import asset_path
    from toolkit.engine import probe_script, split_probe
    from toolkit.hosts.connect import connect
    from toolkit.hosts.facts import parse_facts
    from toolkit.inventory import load_inventory

    try:
        inv = load_inventory(inventory or asset_path("inventory/localhost.yml"))
        hosts = inv.select(pattern)
    except ToolkitError as exc:
        fail(exc)
    policy = "accept-new" if accept_new_host_keys else "strict"

    def gather(host):
        try:
            with connect(host, host_key_policy=policy) as conn:
                out = conn.run(probe_script(host.vars.get("toolkit_data_dir"), [], RunOptions()))
            return host.name, parse_facts(split_probe(out.stdout)[0]).as_dict()
        except Exception as exc:  # report per host, go on with the others
            return host.name, {"error": str(exc)}

    with ThreadPoolExecutor(max_workers=20) as pool:
        gathered = dict(pool.map(gather, hosts))
    if as_json:
        click.echo(json.dumps(gathered, indent=2))
        return
    for name, values in gathered.items():
        click.echo(click.style(name, bold=True))
        for key, value in values.items():
            click.echo(f"  {key:<18} {value}")


@main.command()
@click.argument("pattern", default="all")
@click.option("-i", "--inventory", type=click.Path(exists=True, dir_okay=False))
@click.option("--watch", is_flag=True, help="Redraw in place until Ctrl-C.")
@click.option("--every", default=2.0, show_default=True, help="Seconds between --watch redraws.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--accept-new-host-keys", is_flag=True)
def status(pattern, inventory, watch, every, as_json, accept_new_host_keys):
    """Services of the hosts matching PATTERN: state, restarts, RSS, health, traffic, disk.
    Exit 0 when all are running and healthy, 1 otherwise."""
    from toolkit.status import command

    try:
        policy = "accept-new" if accept_new_host_keys else "strict"
        sys.exit(command(pattern, inventory, every if watch else None, as_json, policy))
    except ToolkitError as exc:
        fail(exc)


@main.command()
@click.argument("host")
@click.argument("service", required=False)
@click.option("-i", "--inventory", type=click.Path(exists=True, dir_okay=False))
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(min=0),
              help="Last lines to show.")  # fmt: skip
@click.option("-f", "--follow", is_flag=True, help="Print new lines until Ctrl-C.")
@click.option("--accept-new-host-keys", is_flag=True)
def logs(host, service, inventory, lines, follow, accept_new_host_keys):
    """Log of SERVICE (all services if none; a model's name finds its engine) on HOST."""
    from toolkit.logs import command

    try:
        policy = "accept-new" if accept_new_host_keys else "strict"
        command(host, service, lines, follow, inventory, policy)
    except ToolkitError as exc:
        fail(exc)


@main.command()
@click.option("-n", "--last", default=20, show_default=True)
def history(last):
    """List past runs: when, playbook, hosts, changed, failed, duration."""
    from toolkit.report import read_history

    for entry in read_history(last):
        click.echo(
            f"{entry['when']}  {entry['command']:<14} {entry['playbook']:<28} "
            f"hosts={len(entry['hosts']):<3} changed={entry['changed']:<3} "
            f"failed={entry['failed']:<3} {entry['seconds']:.1f} s"
        )


@main.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def proxy(args):
    """Run the OpenAI proxy alone: --routes FILE [--host H] [--port P] [--workers N]
    [--allow-unauthenticated] [--no-access-log] (the same as `python -m proxy`)."""
    from proxy.__main__ import main as proxy_main

    sys.exit(proxy_main(list(args), prog="toolkit proxy"))


# --- day two: models and serve (toolkit/models/catalog.py, toolkit/serve.py) ----------------


@main.group()
def models():
    """The models on the workstation and on each host: list, inspect, verify, remove."""


def _hosts(inventory: str | None, pattern: str | None):
    from toolkit.assets import asset_path
    from toolkit.inventory import load_inventory

    if pattern is None:
        return []
    inv = load_inventory(inventory or asset_path("inventory/localhost.yml"))
    return inv.select(pattern)


def _on_hosts(hosts, work):
    """``work(host, conn, data_dir)`` on each host in parallel: {host name: result or error}."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.hosts.connect import connect

    def one(host):
        try:
            with connect(host) as conn:
                return host.name, work(host, conn, host.vars.get("toolkit_data_dir"))
        except Exception as exc:  # one host's failure is reported, the others go on
            return host.name, ToolkitError(f"{host.name}: {exc}")

    with ThreadPoolExecutor(max_workers=20) as pool:
        return dict(pool.map(one, hosts))


def _host_option(func):
    func = click.option("-i", "--inventory", type=click.Path(exists=True, dir_okay=False))(func)
    return click.option("--host", "pattern", default="all", show_default=True,
                        help="Hosts whose placed models to include.")(func)  # fmt: skip


@models.command("list")
@_host_option
@click.option("--json", "as_json", is_flag=True)
def models_list(pattern, inventory, as_json):
    """The workstation's store and each host's placed models: size, sha256, services using it."""
    from toolkit.models.catalog import host_models, workstation_models
    from toolkit.models.store import controller_store

    store = controller_store()
    found = workstation_models(store)
    names = {m.sha256: m.name for m in found}
    failed = False
    listing = _on_hosts(_hosts(inventory, pattern), lambda h, c, d: host_models(h.name, c, d))
    for result in listing.values():
        if isinstance(result, Exception):
            click.echo(f"error: {result}", err=True)
            failed = True
            continue
        for m in result:
            m.name = m.name or names.get(m.sha256, "")
        found += result
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in found], indent=2))
    else:
        click.echo(f"{'WHERE':<16} {'SHA256':<14} {'SIZE':>9}  {'NAME':<36} USED BY")
        for m in found:
            click.echo(f"{m.where:<16} {m.sha256[:12]:<14} {m.size / 1e6:>7.0f}MB  "
                       f"{m.name or '-':<36} {', '.join(m.used_by) or '-'}")  # fmt: skip
    sys.exit(EXIT_ERROR if failed else EXIT_OK)


@models.command("inspect")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True)
def models_inspect(target, as_json):
    """What a GGUF says of itself: TARGET is a file, a sha256 prefix or a cached file name."""
    from pathlib import Path

    from toolkit.models.catalog import describe, resolve, workstation_models
    from toolkit.models.store import controller_store

    try:
        path = Path(target)
        if not path.is_file():
            store = controller_store()
            path = store.blob_path(resolve(store, target, workstation_models(store)))
        details = describe(path)
    except ToolkitError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        click.echo(f"{key:<16} {value}")


@models.command("verify")
@_host_option
def models_verify(pattern, inventory):
    """Hash every placed model on the hosts again; exit 1 when one differs from its sha256."""
    from toolkit.models.catalog import verify_host

    bad = False
    for host, result in _on_hosts(
        _hosts(inventory, pattern), lambda h, c, d: verify_host(c, d)
    ).items():
        if isinstance(result, Exception):
            click.echo(f"error: {result}", err=True)
            bad = True
            continue
        for sha, ok in result.items():
            bad |= not ok
            click.echo(f"{host}: {sha[:12]} {'ok' if ok else 'DIFFERS from its sha256'}")
    sys.exit(EXIT_ERROR if bad else EXIT_OK)


@models.command("remove")
@click.argument("name")
@_host_option
def models_remove(name, pattern, inventory):
    """Remove a model (sha256 prefix or file name) from the workstation and the hosts; refused
    on a host where a service still uses it."""
    from toolkit.models.catalog import (
        host_models,
        remove_from_host,
        resolve,
        workstation_models,
    )
    from toolkit.models.store import controller_store

    store = controller_store()
    hosts = _hosts(inventory, pattern)
    placed = _on_hosts(hosts, lambda h, c, d: host_models(h.name, c, d))
    known = workstation_models(store) + [
        m for result in placed.values() if not isinstance(result, Exception) for m in result
    ]
    try:
        sha = resolve(store, name, known)
    except ToolkitError as exc:
        fail(exc)
    users = {m.where: m.used_by for m in known if m.sha256 == sha and m.used_by}
    if users:
        fail(ToolkitError(f"{sha[:12]} is used by " + "; ".join(
            f"{where}: {', '.join(services)}" for where, services in users.items()
        ) + " (stop them first: toolkit down PLAYBOOK)"))  # fmt: skip
    holding = [h for h in hosts if any(m.sha256 == sha for m in placed.get(h.name) or [])]
    _on_hosts(holding, lambda h, c, d: remove_from_host(c, d, sha))
    if store.has(sha):
        store.blob_path(sha).unlink()
    click.echo(f"removed {sha[:12]} from the workstation"
               + "".join(f", {h.name}" for h in holding))  # fmt: skip


@main.command()
@click.argument("target")
@click.option("--port", default=8080, show_default=True, help="The proxy's port.")
@click.option("--ctx-size", default=4096, show_default=True)
@click.option("--sha256", help="Pin the file (default: hashed here, or the Hub's own sha256).")
@click.option("--data-dir", help="Where it runs (default ~/.local/share/toolkit/serve/NAME).")
def serve(target, port, ctx_size, sha256, data_dir):
    """Serve one model here with the proxy in front: TARGET is a GGUF file or
    hf:org/repo/file.gguf. Ctrl-C stops it (files and models stay)."""
    from toolkit.engine import Engine, stop_all
    from toolkit.report import Reporter
    from toolkit.serve import wait_for_stop, write_playbook
    from toolkit.site import load_site

    try:
        playbook = write_playbook(target, port, ctx_size, sha256, data_dir)
        site = load_site(playbook)
    except ToolkitError as exc:
        fail(exc)
    click.echo(f"playbook: {playbook}")
    reporter = Reporter()
    results = Engine(site, RunOptions(), reporter).run()
    reporter.recap(results, sum(r.seconds for r in results), False)
    reporter.endpoints(results)
    if any(r.failed for r in results):
        stop_all(site, reporter, RunOptions())
        sys.exit(EXIT_ERROR)
    click.echo("serving; Ctrl-C to stop")
    wait_for_stop()
    stop_all(site, reporter, RunOptions())
    click.echo("stopped")


if __name__ == "__main__":
    main()
