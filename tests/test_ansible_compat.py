"""Everyday Ansible inventories and host patterns, read by toolkit and by Ansible itself.

Each inventory of the corpus is read by ``ansible-inventory --list`` (ansible-core, a test extra)
and by toolkit: the hosts, each group's hosts and children, and each host's merged variables must
be equal. The variables are compared twice: as written (what ``ansible-inventory`` prints) and
rendered (``ansible HOSTS -m debug -a var=hostvars[inventory_hostname]``, which resolves Jinja
chains), so a template toolkit resolves differently from Ansible fails here. Host patterns are
compared with ``ansible-playbook --list-hosts`` (one play per pattern) and ``-l PATTERN``.

Documented differences (README, "Ansible inventories"): a template that is a single expression
renders as a string in toolkit (Ansible keeps the native type: ``"{{ port }}"`` is 8080 there);
the values toolkit reads are converted where the playbook wants an integer, so the corpus compares
such values as text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from toolkit.errors import ConfigError, ToolkitError
from toolkit.inventory import NoHostsMatched, load_inventory
from toolkit.variables import LazyVars

ANSIBLE_TIMEOUT = 600  # the machine is shared: generous, never asserted


def ansible_env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_HOME": str(tmp / ".ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / ".ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }


def run_ansible(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        args,
        cwd=cwd,
        env=ansible_env(cwd),
        capture_output=True,
        text=True,
        timeout=ANSIBLE_TIMEOUT,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def source_args(sources: list[Path]) -> list[str]:
    return [arg for source in sources for arg in ("-i", str(source))]


def ansible_inventory(sources: list[Path], cwd: Path, playbook_dir: Path | None) -> dict:
    extra = ["--playbook-dir", str(playbook_dir)] if playbook_dir else []
    done = run_ansible(["ansible-inventory", *source_args(sources), "--list", *extra], cwd)
    return json.loads(done.stdout)


def ansible_rendered_vars(
    pattern: str, sources: list[Path], cwd: Path, playbook_dir: Path | None
) -> dict[str, dict]:
    """Every host's variables as Ansible renders them (magic variables included)."""
    extra = ["--playbook-dir", str(playbook_dir)] if playbook_dir else []
    done = run_ansible(
        ["ansible", pattern, *source_args(sources), *extra, "-m", "debug", "-a",
         "var=hostvars[inventory_hostname]"],
        cwd,
    )  # fmt: skip
    rendered: dict[str, dict] = {}
    host, lines = None, []
    for line in done.stdout.splitlines():  # the minimal callback: "HOST | SUCCESS => {" ... "}"
        start = re.fullmatch(r"(\S+) \| SUCCESS => \{", line)
        if start:
            host, lines = start.group(1), ["{"]
        elif host is not None:
            lines.append(line)
            if line == "}":
                rendered[host] = json.loads("\n".join(lines))["hostvars[inventory_hostname]"]
                host = None
    return rendered


def as_text_where_ours_is(theirs, ours):
    """Ansible's rendered value, a number turned to text where toolkit's is text (a lone
    ``"{{ x }}"`` keeps its native type in Ansible; see the module's docstring)."""
    if isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and isinstance(ours, str):
        return str(theirs)
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
        return [as_text_where_ours_is(t, o) for t, o in zip(theirs, ours, strict=True)]
    return theirs


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relpath, text in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


# -- the corpus -------------------------------------------------------------------------------

CORPUS = {
    "ini-ranges-children-typed-ipv6": {
        "files": {
            "hosts": """
                # a comment, and ; another
                ; comment
                [web]
                web[01:03].example.com http_port=8080 enabled=True ratio=0.5 name="a b"
                web04 ansible_host=10.0.0.4 ansible_port=2222 tags='["x", "y"]'

                [db]
                db-[a:c]  # trailing comment
                [2001:db8::1]:2022 role=v6
                10.0.0.9:2200

                [prod:children]
                web
                db

                [prod:vars]
                env=prod
                list_value=[1, 2]
                app_dir=/srv/app
                models_dir="{{ app_dir }}/models"
                model_path="{{ models_dir }}/x.gguf"

                [all:vars]
                ntp=pool.ntp.org
                count=3
                """,
        },
        "sources": ["hosts"],
    },
    "yaml-nested-groupvars-dir-priority": {
        "files": {
            "inv/hosts.yml": """
                all:
                  vars: {level: all, base: /opt}
                  children:
                    dc1:
                      vars: {level: dc1}
                      children:
                        rack1:
                          hosts:
                            r1n1: {ansible_host: 10.1.1.1}
                            r1n2:
                          vars: {level: rack1, where: "{{ base }}/{{ level }}"}
                        rack2:
                          hosts:
                            r2n1:
                    alpha:
                      hosts: {r1n1: }
                      vars: {pick: alpha}
                    beta:
                      hosts: {r1n1: }
                      vars: {pick: beta, ansible_group_priority: 0}
                """,
            "inv/group_vars/all/10-main.yml": "from_all_dir: one\nshared: all\n",
            "inv/group_vars/all/20-more.yaml": "from_all_dir: two\n",
            "inv/group_vars/rack1.yml": "shared: rack1\nnested: {a: 1, b: [1, 2]}\n",
            "inv/group_vars/dc1": "dc_file: yes\n",
            "inv/host_vars/r1n2.yml": "shared: host\nlevel: host-r1n2\n",
        },
        "sources": ["inv/hosts.yml"],
    },
    "json-inventory": {
        "files": {
            "inv.json": """
                {"all": {"vars": {"x": 1},
                         "children": {"gpu": {"hosts": {"g1": {"ansible_port": 2201},
                                                        "g2": null},
                                              "vars": {"cuda": true,
                                                       "path": "/m/{{ x }}"}}}}}
                """,
        },
        "sources": ["inv.json"],
    },
    "directory-of-sources": {
        "files": {
            "inv/01-web.ini": "[web]\nw1\nw2 port_note=ini\n\n[web:vars]\nfrom=ini\n",
            "inv/02-db.yml": "db:\n  hosts:\n    d1:\n  vars:\n    from: yaml\n",
            "inv/03-more": "web:\n  hosts:\n    w3:\n",  # no extension, YAML inside
            "inv/04-legacy": "[cache]\nc1\n",  # no extension, INI inside
            "inv/README.md": "# not an inventory: skipped\n",
            "inv/old.retry": "w1\n",
            "inv/group_vars/web.yml": "gv: web\n",
            "inv/host_vars/d1.yml": "hv: d1\n",
        },
        "sources": ["inv"],
    },
    "several-sources-merged": {
        "files": {
            "a/hosts.ini": "[web]\nw1 who=a\nw2\n\n[web:vars]\nsite=a\n",
            "a/group_vars/web.yml": "from_a: yes\nwinner: a\n",
            "b/hosts.yml": "web:\n  hosts:\n    w2: {who: b}\n    w3:\n  vars: {site: b}\n",
            "b/group_vars/web.yml": "winner: b\n",
        },
        "sources": ["a/hosts.ini", "b/hosts.yml"],
    },
    "vars-beside-the-playbook-win": {
        "files": {
            "inventory/hosts.ini": "[gpu]\ng1\ng2 inline=host\n",
            "inventory/group_vars/all.yml": "a: inv-all\nb: inv-all\n",
            "inventory/group_vars/gpu.yml": "c: inv-gpu\nd: inv-gpu\n",
            "inventory/host_vars/g1.yml": "e: inv-host\nf: inv-host\n",
            "playbooks/group_vars/all.yml": "b: pb-all\n",
            "playbooks/group_vars/gpu.yml": "d: pb-gpu\n",
            "playbooks/host_vars/g1.yml": "f: pb-host\n",
            "playbooks/host_vars/g2.yml": "inline: pb-host\n",
        },
        "sources": ["inventory/hosts.ini"],
        "playbook_dir": "playbooks",
    },
    "jinja-chains-across-levels": {
        "files": {
            "hosts.yml": """
                all:
                  vars:
                    root: /srv
                    app_dir: "{{ root }}/{{ app_name }}"
                    models_dir: "{{ app_dir }}/models"
                    model_path: "{{ models_dir }}/{{ model_file }}"
                    banner: "{{ inventory_hostname }} in {{ group_names | join(',') }}"
                    ports: ["{{ base_port }}", "{{ base_port | int + 1 }}"]
                  children:
                    gpu:
                      vars: {app_name: llm, model_file: gemma.gguf, base_port: 8100}
                      hosts:
                        g1:
                        g2: {model_file: "{{ app_name }}-g2.gguf"}
                """,
        },
        "sources": ["hosts.yml"],
    },
}


def load_both(case: dict, root: Path):
    write_tree(root, case["files"])
    sources = [root / s for s in case["sources"]]
    playbook_dir = root / case["playbook_dir"] if "playbook_dir" in case else None
    ours = load_inventory(sources, playbook_dir=playbook_dir)
    theirs = ansible_inventory(sources, root, playbook_dir)
    return sources, playbook_dir, ours, theirs


@pytest.mark.parametrize("name", list(CORPUS))
def test_inventory_reads_as_ansible_inventory_lists_it(name, tmp_path):
    sources, playbook_dir, ours, theirs = load_both(CORPUS[name], tmp_path)
    hostvars = theirs.pop("_meta")["hostvars"]
    listed = {h for body in theirs.values() for h in body.get("hosts", [])}
    assert set(ours.hosts) == listed
    for group, body in theirs.items():
        assert group in ours.groups, group
        assert sorted(ours.groups[group].hosts) == sorted(body.get("hosts", [])), group
        assert sorted(ours.groups[group].children) == sorted(body.get("children", [])), group
    ours_nonempty = {g for g, body in ours.groups.items() if body.hosts or body.children}
    assert ours_nonempty <= set(theirs)
    for host in ours.hosts.values():
        assert host.vars == hostvars.get(host.name, {}), host.name

    rendered = ansible_rendered_vars("all", sources, tmp_path, playbook_dir)
    assert set(rendered) == set(ours.hosts)
    for host in ours.hosts.values():
        lazy = LazyVars({
            "inventory_hostname": host.name,
            "group_names": sorted(g for g in host.groups if g not in ("all", "ungrouped")),
            **host.vars,
        })  # fmt: skip
        for key in host.vars:
            ours_value = lazy[key]
            assert ours_value == as_text_where_ours_is(rendered[host.name][key], ours_value), (
                host.name,
                key,
            )


def test_chain_renders_to_the_end(tmp_path):
    """The bug of issue 15: the second level of a chain was left as a literal template."""
    write_tree(tmp_path, CORPUS["jinja-chains-across-levels"]["files"])
    host = load_inventory(tmp_path / "hosts.yml").hosts["g2"]
    lazy = LazyVars({"inventory_hostname": "g2", "group_names": ["gpu"], **host.vars})
    assert lazy["model_path"] == "/srv/llm/models/llm-g2.gguf"


def test_implicit_localhost_as_ansible(tmp_path):
    write_tree(tmp_path, {
        "hosts.ini": "[web]\nw1\n\n[all:vars]\nsite=x\n",
        "group_vars/all.yml": "from_all: yes\n",
        "host_vars/localhost.yml": "mine: local\n",
    })  # fmt: skip
    sources = [tmp_path / "hosts.ini"]
    ours = load_inventory(sources)
    assert "localhost" not in ours.hosts  # not part of all, as in Ansible
    assert [h.name for h in ours.select("all")] == ["w1"]
    (local,) = ours.select("localhost")
    assert local.connection == "local"
    rendered = ansible_rendered_vars("localhost", sources, tmp_path, None)["localhost"]
    for key in ("site", "from_all", "mine", "ansible_connection"):
        assert local.vars[key] == rendered[key], key
    assert local.groups == [] and rendered["group_names"] == []


def test_an_undefined_child_group_is_refused_by_both(tmp_path):
    write_tree(tmp_path, {"hosts": "[web]\nw1\n\n[prod:children]\nweb\nnever_defined\n"})
    done = run_ansible(["ansible-inventory", "-i", "hosts", "--list"], tmp_path, check=False)
    assert done.returncode != 0 and "never_defined" in done.stderr
    with pytest.raises(ConfigError, match=r'hosts:6:1: .*"never_defined", which is never defined'):
        load_inventory(tmp_path / "hosts")
    # defined later in the file, as Ansible allows
    write_tree(tmp_path, {"hosts": "[prod:children]\nweb\n\n[web]\nw1\n"})
    assert [h.name for h in load_inventory(tmp_path / "hosts").select("prod")] == ["w1"]


# -- patterns ---------------------------------------------------------------------------------

FLEET = """
[web]
web01
web02
web03
web04
web05
web06
web07
web08
web09
web10

[db]
db1
db2

[prod]
web01
web02
web05
db1

[stage]
web03
web04
db2

[gpu:children]
db
"""

PATTERNS = [
    "all",
    "*",
    "web",
    "web*",
    "web*:&prod",
    "web*:&prod:!web02",
    "web*,&prod,!~web0[1-4]",
    "web*,!~web0[1-4],&prod",
    "prod,stage,!db*",
    "!web",
    "&prod",
    "~web0[13]",
    "~(db|web1)",
    "all[0]",
    "web[0]",
    "web[0:2]",
    "web[-1]",
    "web[8:]",
    "prod[1:]",
    "web[1:3],db[0]",
    "db2,web01,db1",
    "gpu",
    "gpu:&stage",
    "web0?",
    "web1*,db",
    "prod:!nomatch*",
]

# Where toolkit refuses what Ansible quietly reads as "no host" (README, "Ansible inventories"):
# a term that matches nothing is a mistake toolkit reports, with a hint.
STRICTER = {
    "nomatch,db1": r'no host or group matches "nomatch"',
    "web*,&prod,!web0[1-4]": r'"web0\[1-4\]": .* use a regex: "~web0\[1-4\]"',
    "web*,!web0[1:4],&prod": r'"web0\[1:4\]": .* use a regex: "~web0\[1-4\]"',
}


def parse_list_hosts(output: str) -> list[list[str]]:
    """``ansible-playbook --list-hosts``: each play's hosts, in order."""
    plays: list[list[str]] = []
    hosts: list[str] | None = None
    for line in output.splitlines():
        if re.match(r"\s+play #\d+", line):
            hosts = []
            plays.append(hosts)
        elif re.match(r"\s+(pattern:|hosts \(\d+\):)", line) or not line.strip():
            continue
        elif hosts is not None and line.startswith("      "):
            hosts.append(line.strip())
    return plays


def ours_or_none(inventory, pattern: str) -> list[str]:
    try:
        return [h.name for h in inventory.select(pattern)]
    except NoHostsMatched:
        return []


@pytest.fixture
def fleet_inventory(tmp_path):
    write_tree(tmp_path, {"hosts": FLEET})
    return tmp_path / "hosts"


def test_patterns_select_what_ansible_selects(fleet_inventory, tmp_path):
    """Which hosts, for every pattern at once: ``ansible-playbook --list-hosts`` prints each play's
    hosts in no stable order, so they are compared as sets here, and in order below."""
    plays = "".join(
        f"- name: p{i}\n  hosts: {json.dumps(p)}\n  gather_facts: false\n  tasks: []\n"
        for i, p in enumerate(PATTERNS)
    )
    (tmp_path / "pb.yml").write_text(plays)
    done = run_ansible(
        ["ansible-playbook", "-i", str(fleet_inventory), "pb.yml", "--list-hosts"], tmp_path
    )
    theirs = [sorted(hosts) for hosts in parse_list_hosts(done.stdout)]
    assert len(theirs) == len(PATTERNS)
    inventory = load_inventory(fleet_inventory)
    ours = [sorted(ours_or_none(inventory, pattern)) for pattern in PATTERNS]
    differ = [(p, o, t) for p, o, t in zip(PATTERNS, ours, theirs, strict=True) if o != t]
    assert not differ


@pytest.mark.parametrize("pattern", list(STRICTER))
def test_a_term_that_matches_nothing_is_refused_with_a_hint(fleet_inventory, pattern):
    with pytest.raises(ToolkitError, match=STRICTER[pattern]):
        load_inventory(fleet_inventory).select(pattern)


@pytest.mark.parametrize("pattern", ["all", "db2,web01,db1", "gpu,prod", "web*:&prod:!web02"])
def test_patterns_order_hosts_as_ansible(fleet_inventory, tmp_path, pattern):
    done = run_ansible(["ansible", pattern, "-i", str(fleet_inventory), "--list-hosts"], tmp_path)
    theirs = [line.strip() for line in done.stdout.splitlines()[1:] if line.strip()]
    assert [h.name for h in load_inventory(fleet_inventory).select(pattern)] == theirs


@pytest.mark.parametrize("limit", ["web*,&prod,!~web0[1-4]", "all[0]", "web[8:]", "db,web[-1]"])
def test_limit_narrows_as_ansible_limit(fleet_inventory, tmp_path, limit):
    (tmp_path / "pb.yml").write_text("- hosts: all\n  gather_facts: false\n  tasks: []\n")
    done = run_ansible(
        ["ansible-playbook", "-i", str(fleet_inventory), "pb.yml", "--list-hosts", "-l", limit],
        tmp_path,
    )
    (theirs,) = parse_list_hosts(done.stdout)
    inventory = load_inventory(fleet_inventory)
    allowed = {h.name for h in inventory.select(limit)}
    assert sorted(h.name for h in inventory.select("all") if h.name in allowed) == sorted(theirs)


def test_subscript_out_of_range_selects_nothing_and_toolkit_says_why(fleet_inventory, tmp_path):
    """Ansible selects no host (a warning); toolkit refuses a term that selects nothing, as it
    refuses an unknown group (README), here with the group's size."""
    done = run_ansible(["ansible", "db[5]", "-i", str(fleet_inventory), "--list-hosts"], tmp_path)
    assert "hosts (0)" in done.stdout
    with pytest.raises(Exception, match=r"db\[5\].*no host at that index \(db holds 2\)"):
        load_inventory(fleet_inventory).select("db[5]")
