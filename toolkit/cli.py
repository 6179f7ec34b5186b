"""The ``toolkit`` command: apply, down, facts, history, proxy.

Options follow ansible-playbook's where they mean the same (``-i``, ``-l``, ``-e``, ``-C``, ``-D``,
``-v``, ``-u``, ``-b``, ``--private-key``, ``--list-hosts``, ``--syntax-check``...); Ansible options
that have no meaning here are refused with the reason, not "No such option".
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click
import yaml

from toolkit.errors import ToolkitError
from toolkit.resources.base import RunOptions

# 2 is "changes pending" under --check (Terraform's -detailed-exitcode), so a usage error gets
# its own code: 64, EX_USAGE of sysexits.h.
EXIT_OK, EXIT_ERROR, EXIT_PENDING, EXIT_USAGE = 0, 1, 2, 64

EXIT_CODES_HELP = (
    "Exit codes: 0 done (or nothing to change); 1 error (a host failed or was unreachable, a "
    "playbook or inventory mistake); 2 changes pending (apply --check only); 64 usage error "
    "(unknown option, missing file, bad -e or -l value)."
)

# Ansible options a user may type by habit, and why they mean nothing here.
ANSIBLE_ONLY_OPTIONS = [
    (("-t", "--tags"), True, "a playbook has no tasks to tag: each play converges whole"),
    (("--skip-tags",), True, "a playbook has no tasks to tag: each play converges whole"),
    (("--step",), False, "there are no tasks to step through; use --check to see every change"),
    (("--start-at-task",), True, "a playbook has no tasks; a second apply redoes only what is missing"),
    (("--list-tasks",), False, "a playbook has no tasks; --check lists what would change"),
    (("--list-tags",), False, "a playbook has no tasks to tag"),
    (("-k", "--ask-pass"), False, "toolkit logs in with SSH keys or the SSH agent only"),
    (("--become-method",), True, "toolkit becomes root with sudo only"),
    (("--become-user",), True, "toolkit becomes root (sudo) only"),
    (("--vault-password-file", "--vault-pass-file"), True, "Ansible Vault is not supported"),
    (("-J", "--ask-vault-password", "--ask-vault-pass"), False, "Ansible Vault is not supported"),
    (("--vault-id",), True, "Ansible Vault is not supported"),
    (("-c", "--connection"), True,
     "the connection is per host (ansible_connection: ssh or local in the inventory)"),
    (("-M", "--module-path"), True, "toolkit runs no Ansible modules"),
    (("--flush-cache",), False, "facts are probed on every run (the cache only speeds it up)"),
    (("--force-handlers",), False, "services restart when their inputs change, always"),
]  # fmt: skip


def ansible_only_help() -> str:
    names = ", ".join("/".join(decls) for decls, _, _ in ANSIBLE_ONLY_OPTIONS)
    return f"Ansible options with no meaning here (refused, with the reason): {names}."


def _refuse(ctx: click.Context, param: click.Parameter, value) -> None:
    if value in (None, False, ()):
        return
    reason = next(r for decls, _, r in ANSIBLE_ONLY_OPTIONS if param.opts[0] in decls)
    raise click.UsageError(f"{'/'.join(param.opts)} has no meaning in toolkit: {reason}", ctx)


def ansible_only_options(func):
    for decls, takes_value, _ in ANSIBLE_ONLY_OPTIONS:
        func = click.option(
            *decls, is_flag=not takes_value, hidden=True, expose_value=False, callback=_refuse
        )(func)
    return func


class ToolkitGroup(click.Group):
    """Click's usage errors exit with EXIT_USAGE instead of 2 (2 is "changes pending")."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


def fail(exc: Exception) -> None:
    from toolkit.report import use_color

    text = f"error: {exc}"
    click.echo(click.style(text, fg="red") if use_color(sys.stderr) else text, err=True)
    sys.exit(EXIT_ERROR)


# -- option values ----------------------------------------------------------------------------


def parse_extra_vars(values: tuple[str, ...]) -> dict:
    """``-e`` as Ansible reads it: ``key=value`` pairs (several in one, shell-quoted), a JSON or
    YAML mapping (``'{"k": 1}'``), or ``@file`` (a YAML or JSON file). Later ones win."""
    extra: dict = {}
    for value in values:
        text = value.strip()
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            try:
                loaded = yaml.safe_load(path.read_text())
            except OSError as exc:
                raise click.BadParameter(f"{value}: {exc.strerror}", param_hint="-e") from None
            except yaml.YAMLError as exc:
                raise click.BadParameter(
                    f"{value}: not YAML or JSON: {_one_line(exc)}", param_hint="-e"
                ) from None
            if loaded is None:
                continue
            if not isinstance(loaded, dict):
                raise click.BadParameter(f"{value}: must hold a mapping", param_hint="-e")
            extra.update(loaded)
        elif text.startswith(("{", "[")):
            try:
                loaded = json.loads(text)
            except ValueError as exc:
                try:  # Ansible accepts YAML flow mappings too
                    loaded = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise click.BadParameter(
                        f"{value!r} is not valid JSON: {exc}", param_hint="-e"
                    ) from None
            if not isinstance(loaded, dict):
                raise click.BadParameter(f"{value!r} must be a mapping", param_hint="-e")
            extra.update(loaded)
        else:
            try:
                pairs = shlex.split(text)
            except ValueError as exc:
                raise click.BadParameter(f"{value!r}: {exc}", param_hint="-e") from None
            for pair in pairs or [text]:
                key, sep, item = pair.partition("=")
                if not sep or not key:
                    raise click.BadParameter(
                        f"expected key=value, {{json}} or @file, got {pair!r}", param_hint="-e"
                    )
                extra[key] = item
    return extra


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def expand_limit(limit: str | None) -> str | None:
    """``-l @file`` (one host a line, as a retry file holds them), alone or in a comma list."""
    if not limit or "@" not in limit:
        return limit
    terms = []
    for term in limit.split(","):
        term = term.strip()
        if not term.startswith("@"):
            terms.append(term)
            continue
        try:
            lines = Path(term[1:]).expanduser().read_text().splitlines()
        except OSError as exc:
            raise click.BadParameter(f"{term}: {exc.strerror}", param_hint="-l") from None
        terms += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not terms:
        raise click.BadParameter(f"{limit}: names no host", param_hint="-l")
    return ",".join(terms)


def connection_defaults(user, private_key, become) -> dict:
    """``-u``, ``--private-key``, ``-b``: used by hosts whose inventory does not set them."""
    defaults = {}
    if user:
        defaults["ansible_user"] = user
    if private_key:
        defaults["ansible_ssh_private_key_file"] = private_key
    if become:
        defaults["ansible_become"] = True
    return defaults


def retry_path(playbook: str) -> Path:
    from toolkit.report import history_path

    return history_path().parent / "retry" / f"{Path(playbook).stem}.retry"


def write_retry_file(playbook: str, results) -> Path | None:
    """The failed hosts, one a line, for ``-l @FILE``; removed when no host failed."""
    path = retry_path(playbook)
    failed = sorted({r.host for r in results if r.failed})
    if not failed:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in failed))
    return path


# -- shared options ---------------------------------------------------------------------------


def inventory_options(func):
    func = click.option("-i", "--inventory", "inventories", multiple=True,
                        type=click.Path(exists=True),
                        help="Inventory file or directory (repeat to merge several; default: "
                        "inventory/localhost.yml).")(func)  # fmt: skip
    func = click.option("-u", "--user", help="Login user for hosts whose inventory sets none "
                        "(ansible_user).")(func)  # fmt: skip
    func = click.option("--private-key", "--key-file", "private_key",
                        type=click.Path(exists=True, dir_okay=False),
                        help="SSH key for hosts whose inventory sets none.")(func)  # fmt: skip
    func = click.option("--accept-new-host-keys", is_flag=True,
                        help="Add unknown SSH host keys to known_hosts (changed keys are "
                        "still refused).")(func)  # fmt: skip
    return func


def common_site_options(func):
    func = inventory_options(func)
    func = click.option("-l", "--limit", help="Only hosts matching this pattern; @FILE reads "
                        "host names from a file (a retry file).")(func)  # fmt: skip
    func = click.option("-e", "--extra-vars", "extra_vars", multiple=True,
                        help="key=value (several, space-separated), a JSON/YAML mapping, or "
                        "@FILE; highest precedence.")(func)  # fmt: skip
    func = click.option("--json", "json_events", is_flag=True,
                        help="Print one JSON event a line.")(func)  # fmt: skip
    func = click.option("-b", "--become", is_flag=True,
                        help="Use sudo on hosts whose inventory does not set ansible_become.")(func)  # fmt: skip
    func = click.option("-K", "--ask-become-pass", is_flag=True,
                        help="Ask for the sudo password of become hosts (else it is read from "
                        "$TOOLKIT_BECOME_PASSWORD). It is never logged.")(func)  # fmt: skip
    func = click.option("-v", "--verbose", "verbosity", count=True,
                        help="-v: each step's duration; -vv: every command run on each host, "
                        "with exit code and duration; -vvv: their text and output.")(func)  # fmt: skip
    func = ansible_only_options(func)
    return func


def become_password(ask: bool) -> str | None:
    if not ask:
        return None  # the engine falls back to $TOOLKIT_BECOME_PASSWORD
    return click.prompt("BECOME password", hide_input=True, err=True)


def load(playbook, inventories, extra_vars, user=None, private_key=None, become=False):
    from toolkit.site import load_site

    return load_site(
        playbook,
        list(inventories) or None,
        parse_extra_vars(extra_vars),
        connection_defaults(user, private_key, become),
    )


def quiet_ssh_library_logs(verbosity: int) -> None:
    """paramiko logs failed connections with a traceback to stderr; the error is reported once,
    per host, in the run's output. From -vvv on, its log lines are shown."""
    logger = logging.getLogger("paramiko")
    if verbosity >= 3:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    elif not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


# -- commands ---------------------------------------------------------------------------------


@click.group(cls=ToolkitGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)  # fmt: skip
@click.version_option(package_name="toolkit")
def main() -> None:
    """Turn machines into verified OpenAI-compatible LLM endpoints."""


@main.command(epilog=f"{EXIT_CODES_HELP}\n\n{ansible_only_help()}")
@click.argument("playbook", type=click.Path(exists=True, dir_okay=False))
@common_site_options
@click.option("-C", "--check", is_flag=True, help="Show what would change; change nothing.")
@click.option("-D", "--diff", is_flag=True, help="Show unified diffs of rendered files.")
@click.option(
    "--verify-checksums",
    is_flag=True,
    help="Hash every placed model again instead of trusting its size/mtime record.",
)
@click.option("-f", "--forks", default=20, show_default=True, help="Hosts worked on at once.")
@click.option("--syntax-check", is_flag=True,
              help="Check the playbook and inventory (every host's rendered play); run nothing.")  # fmt: skip
@click.option("--list-hosts", is_flag=True, help="List each play's hosts; run nothing.")
def apply(playbook, inventories, user, private_key, accept_new_host_keys, limit, extra_vars,
          json_events, become, ask_become_pass, verbosity, check, diff, verify_checksums, forks,
          syntax_check, list_hosts):  # fmt: skip
    """Converge the hosts of PLAYBOOK.

    Exit 0: converged; 2: changes pending (--check); 1: error; 64: usage error. The failed
    hosts are written to a retry file: rerun them with -l @FILE (its path is printed).
    """
    from toolkit.engine import Engine
    from toolkit.report import Reporter, append_history

    quiet_ssh_library_logs(verbosity)
    extra = parse_extra_vars(extra_vars)  # a bad -e is a usage error, before anything is read
    limit = expand_limit(limit)
    try:
        from toolkit.site import load_site

        site = load_site(playbook, list(inventories) or None, extra,
                         connection_defaults(user, private_key, become))  # fmt: skip
        if syntax_check or list_hosts:
            targets = site.targets(limit)
    except ToolkitError as exc:
        fail(exc)
    if syntax_check:
        click.echo(f"playbook: {playbook}: {len(site.plays)} play(s), syntax and values OK")
        return
    if list_hosts:
        click.echo(f"playbook: {playbook}")
        for play, hosts in targets:
            click.echo(f"\n  play #{play.index + 1} ({play.hosts}): {play.name}")
            click.echo(f"    pattern: {play.hosts}")
            click.echo(f"    hosts ({len(hosts)}):")
            for host in hosts:
                click.echo(f"      {host.name}")
        return
    options = RunOptions(
        check=check, diff=diff, verify_checksums=verify_checksums, forks=forks,
        host_key_policy="accept-new" if accept_new_host_keys else "strict",
    )  # fmt: skip
    reporter = Reporter(json_events, verbosity=verbosity)
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
    retry = write_retry_file(playbook, results)
    if retry is not None and not json_events:
        click.echo(f"\nto retry the failed hosts: toolkit apply {playbook} -l @{retry}")
    if any(r.failed for r in results):
        sys.exit(EXIT_ERROR)
    if check and any(r.changed for r in results):
        sys.exit(EXIT_PENDING)


@main.command(epilog=f"{EXIT_CODES_HELP}\n\n{ansible_only_help()}")
@click.argument("playbook", type=click.Path(exists=True, dir_okay=False))
@common_site_options
def down(playbook, inventories, user, private_key, accept_new_host_keys, limit, extra_vars,
         json_events, become, ask_become_pass, verbosity):  # fmt: skip
    """Stop every service PLAYBOOK's apply started (files and models stay)."""
    from toolkit.engine import stop_all
    from toolkit.report import Reporter, append_history

    quiet_ssh_library_logs(verbosity)
    extra_vars = tuple(extra_vars)
    parse_extra_vars(extra_vars)  # a usage error before anything is read
    limit = expand_limit(limit)
    try:
        site = load(playbook, inventories, extra_vars, user, private_key, become)
    except ToolkitError as exc:
        fail(exc)
    options = RunOptions(host_key_policy="accept-new" if accept_new_host_keys else "strict")
    reporter = Reporter(json_events, verbosity=verbosity)
    started = time.monotonic()
    try:
        results = stop_all(site, reporter, options, limit, become_password(ask_become_pass))
    except ToolkitError as exc:
        fail(exc)
    for r in results:
        if not r.failed and not json_events:
            click.echo(f"{r.host}: stopped")
    append_history("down", playbook, results, time.monotonic() - started)
    if any(r.failed for r in results):
        sys.exit(EXIT_ERROR)


@main.command(epilog="Exit codes: 0 every host answered; 1 a host was unreachable or failed, or "
              "an inventory mistake; 64 usage error.")  # fmt: skip
@click.argument("pattern", default="all")
@inventory_options
@click.option("-b", "--become", is_flag=True, help="Use sudo where the inventory does not say.")
@click.option("--json", "as_json", is_flag=True)
def facts(pattern, inventories, user, private_key, accept_new_host_keys, become, as_json):
    """Print the facts of the hosts matching PATTERN."""
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.assets import asset_path
    from toolkit.engine import probe_script, split_probe
    from toolkit.hosts.connect import connect
    from toolkit.hosts.facts import parse_facts
    from toolkit.inventory import load_inventory
    from toolkit.report import use_color
    from toolkit.variables import LazyVars

    quiet_ssh_library_logs(0)
    try:
        inv = load_inventory(
            list(inventories) or asset_path("inventory/localhost.yml"),
            defaults=connection_defaults(user, private_key, become),
        )
        hosts = inv.select(pattern)
    except ToolkitError as exc:
        fail(exc)
    policy = "accept-new" if accept_new_host_keys else "strict"

    def gather(host):
        try:
            if host.unsupported:
                raise ToolkitError(host.unsupported)
            with connect(host, host_key_policy=policy) as conn:
                data_dir = LazyVars({"inventory_hostname": host.name, **host.vars}).get(
                    "toolkit_data_dir"
                )
                out = conn.run(probe_script(data_dir, [], RunOptions()))
            return host.name, parse_facts(split_probe(out.stdout)[0]).as_dict()
        except Exception as exc:  # report per host, go on with the others
            return host.name, {"error": _one_line(exc)}

    with ThreadPoolExecutor(max_workers=20) as pool:
        gathered = dict(pool.map(gather, hosts))
    if as_json:
        click.echo(json.dumps(gathered, indent=2))
    else:
        color = use_color(sys.stdout)
        for name, values in gathered.items():
            click.echo(click.style(name, bold=True) if color else name)
            for key, value in values.items():
                click.echo(f"  {key:<18} {value}")
    failed = [name for name, values in gathered.items() if "error" in values]
    if failed:
        if not as_json:
            click.echo(f"error: no facts from {', '.join(failed)}", err=True)
        sys.exit(EXIT_ERROR)


@main.command(epilog="Exit codes: 0 every service of every host is running and healthy; 1 "
              "otherwise (or a host unreachable, an inventory mistake); 64 usage error.")  # fmt: skip
@click.argument("pattern", default="all")
@inventory_options
@click.option("--watch", is_flag=True, help="Redraw in place until Ctrl-C.")
@click.option("--every", default=2.0, show_default=True, help="Seconds between --watch redraws.")
@click.option("--json", "as_json", is_flag=True)
def status(pattern, inventories, user, private_key, accept_new_host_keys, watch, every, as_json):
    """Services of the hosts matching PATTERN: state, restarts, RSS, health, traffic, disk."""
    from toolkit.status import command

    quiet_ssh_library_logs(0)
    policy = "accept-new" if accept_new_host_keys else "strict"
    defaults = connection_defaults(user, private_key, False)
    try:
        sys.exit(command(pattern, list(inventories), defaults, every if watch else None, as_json,
                         policy))  # fmt: skip
    except ToolkitError as exc:
        fail(exc)


@main.command()
@click.argument("host")
@click.argument("service", required=False)
@inventory_options
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(min=0),
              help="Last lines to show.")  # fmt: skip
@click.option("-f", "--follow", is_flag=True, help="Print new lines until Ctrl-C.")
def logs(host, service, inventories, user, private_key, accept_new_host_keys, lines, follow):
    """Log of SERVICE (all services if none; a model's name finds its engine) on HOST."""
    from toolkit.logs import command

    quiet_ssh_library_logs(0)
    policy = "accept-new" if accept_new_host_keys else "strict"
    defaults = connection_defaults(user, private_key, False)
    try:
        command(host, service, lines, follow, list(inventories), defaults, policy)
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
