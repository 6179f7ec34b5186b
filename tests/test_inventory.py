"""Ansible-compatible inventories: YAML, INI, vars files, precedence, patterns, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from toolkit.errors import ConfigError, ToolkitError
from toolkit.inventory import (
    NoHostsMatched,
    expand_host_range,
    jump_from_ssh_args,
    load_inventory,
)

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def names(hosts) -> list[str]:
    return [host.name for host in hosts]


# -- the example inventory -------------------------------------------------------------------


def test_example_inventory_reads_as_documented():
    inventory = load_inventory(REPO / "inventory" / "example.yml")
    assert names(inventory.select("gpu")) == ["gpu1", "gpu2"]
    gpu2 = inventory.hosts["gpu2"]
    assert (gpu2.address, gpu2.port, gpu2.user, gpu2.connection) == (
        "10.0.0.12",
        22,
        "admin",
        "ssh",
    )
    assert gpu2.key_file == "~/.ssh/gpu2_ed25519"
    assert gpu2.become is True
    assert inventory.hosts["gpu1"].key_file == "~/.ssh/id_ed25519"  # from all's vars
    phone = inventory.select("phones")[0]
    assert (phone.port, phone.user, phone.become) == (8022, "u0_a123", False)
    assert inventory.hosts["cpu2"].jump == "ubuntu@10.0.0.11:22"
    assert inventory.hosts["cpu2"].port == 2222
    assert inventory.hosts["cpu1"].jump is None


# -- YAML ------------------------------------------------------------------------------------


def test_yaml_children_groups_and_membership(tmp_path):
    path = write(
        tmp_path / "hosts.yml",
        """
        all:
          hosts:
            loner:
          children:
            site:
              children:
                web:
                  hosts:
                    web1: {ansible_host: 10.0.0.1}
                    web2:
                db:
                  hosts:
                    db1:
                    web1:
        """,
    )
    inventory = load_inventory(path)
    assert list(inventory.hosts) == ["loner", "web1", "web2", "db1"]
    assert inventory.hosts["web1"].groups == ["all", "site", "db", "web"]
    assert inventory.hosts["loner"].groups == ["all", "ungrouped"]
    assert inventory.groups["site"].children == ["web", "db"]
    assert inventory.groups["web"].hosts == ["web1", "web2"]
    assert names(inventory.select("site")) == ["web1", "web2", "db1"]
    assert inventory.hosts["web1"].address == "10.0.0.1"
    assert inventory.hosts["web2"].address == "web2"


def test_precedence_all_parent_child_host_and_vars_files(tmp_path):
    path = write(
        tmp_path / "inv" / "hosts.yml",
        """
        all:
          vars: {level: all, from_all: 1, file_beats_inline: inline}
          children:
            parent:
              vars: {level: parent, from_parent: 1}
              children:
                child:
                  vars: {level: child, child_inline: inline}
                  hosts:
                    h1: {level: host-inline, host_file: inline}
                    h2:
        """,
    )
    write(tmp_path / "inv" / "group_vars" / "all.yml", "file_beats_inline: all-file\n")
    write(tmp_path / "inv" / "group_vars" / "child.yaml", "child_inline: file\n")
    write(tmp_path / "inv" / "host_vars" / "h1" / "10-a.yml", "host_file: a\nlayered: a\n")
    write(tmp_path / "inv" / "host_vars" / "h1" / "20-b.yml", "layered: b\n")
    inventory = load_inventory(path)
    h1, h2 = inventory.hosts["h1"], inventory.hosts["h2"]
    assert h2.vars["level"] == "child"  # all < parent < child
    assert (h2.vars["from_all"], h2.vars["from_parent"]) == (1, 1)
    assert h1.vars["level"] == "host-inline"  # host beats groups
    assert h1.vars["host_file"] == "a"  # host_vars/ beats inline host vars
    assert h1.vars["layered"] == "b"  # files of a host_vars/ directory in name order
    assert h1.vars["child_inline"] == "file"  # group_vars/child beats inline child vars
    assert h1.vars["file_beats_inline"] == "all-file"
    assert inventory.groups["child"].vars["child_inline"] == "file"
    assert h1.var_pos["level"].line == 10


def test_group_vars_all_file_beats_inline_child_vars_as_in_ansible(tmp_path):
    # Ansible: inventory group vars (any group) < group_vars/all < group_vars/<group>.
    path = write(
        tmp_path / "hosts.yml",
        """
        all:
          children:
            web:
              vars: {who: web-inline}
              hosts: {w1: }
        """,
    )
    write(tmp_path / "group_vars" / "all", "who: all-file\n")
    assert load_inventory(path).hosts["w1"].vars["who"] == "all-file"
    write(tmp_path / "group_vars" / "web.yml", "who: web-file\n")
    assert load_inventory(path).hosts["w1"].vars["who"] == "web-file"


def test_sibling_groups_merge_by_name_then_priority(tmp_path):
    path = write(
        tmp_path / "hosts.yml",
        """
        b_group:
          hosts: {h: }
          vars: {pick: b}
        a_group:
          hosts: {h: }
          vars: {pick: a}
        """,
    )
    assert load_inventory(path).hosts["h"].vars["pick"] == "b"  # same depth: by name, b last
    # as in Ansible, a group_vars/ file does not set the priority (it is an ordinary var there)
    write(tmp_path / "group_vars" / "a_group.yml", "ansible_group_priority: 10\n")
    assert load_inventory(path).hosts["h"].vars["pick"] == "b"
    path.write_text(path.read_text().replace("{pick: a}", "{pick: a, ansible_group_priority: 10}"))
    (tmp_path / "group_vars" / "a_group.yml").unlink()
    host = load_inventory(path).hosts["h"]
    assert host.vars["pick"] == "a"
    assert "ansible_group_priority" not in host.vars  # it orders groups, it is no variable


def test_connection_keys_long_short_and_defaults(tmp_path):
    path = write(
        tmp_path / "hosts.yml",
        """
        all:
          hosts:
            localhost:
            127.0.0.1:
            plain:
            short: {host: 10.1.1.1, port: "2200", user: me, connection: local, become: "yes"}
            long:
              ansible_host: 10.2.2.2
              ansible_port: 8022
              ansible_user: u0_a1
              ansible_connection: ssh
              ansible_become: false
              ansible_ssh_private_key_file: ~/.ssh/k
              ansible_ssh_common_args: -J hop@bastion:2222
            jumper: {jump: "j@box"}
        """,
    )
    hosts = load_inventory(path).hosts
    assert hosts["localhost"].connection == "local"
    assert hosts["127.0.0.1"].connection == "local"
    plain = hosts["plain"]
    assert (plain.connection, plain.port, plain.user, plain.become) == ("ssh", 22, None, False)
    assert (plain.key_file, plain.jump) == (None, None)
    short = hosts["short"]
    assert (short.address, short.port, short.user) == ("10.1.1.1", 2200, "me")
    assert (short.connection, short.become) == ("local", True)
    long = hosts["long"]
    assert (long.address, long.port, long.user, long.connection) == (
        "10.2.2.2",
        8022,
        "u0_a1",
        "ssh",
    )
    assert (long.become, long.key_file, long.jump) == (False, "~/.ssh/k", "hop@bastion:2222")
    assert hosts["jumper"].jump == "j@box"


@pytest.mark.parametrize(
    ("args", "jump"),
    [
        ("-o ProxyJump=me@bastion:2222", "me@bastion:2222"),
        ("-oProxyJump=bastion", "bastion"),
        ("-o 'ProxyJump bastion'", "bastion"),
        ("-J me@bastion", "me@bastion"),
        ('-o ProxyCommand="ssh -W %h:%p -q me@bastion"', "me@bastion"),
        ('-o ProxyCommand="ssh -p 2200 -l me -W %h:%p bastion"', "me@bastion:2200"),
        ("-o StrictHostKeyChecking=no", None),
    ],
)
def test_jump_host_from_ssh_args(args, jump):
    assert jump_from_ssh_args(args) == jump


def test_host_ranges():
    assert expand_host_range("web[01:03].lan") == ["web01.lan", "web02.lan", "web03.lan"]
    assert expand_host_range("n[a:c]") == ["na", "nb", "nc"]
    assert expand_host_range("n[0:10:5]") == ["n0", "n5", "n10"]
    assert expand_host_range("r[1:2]c[1:2]") == ["r1c1", "r1c2", "r2c1", "r2c2"]
    with pytest.raises(ValueError):
        expand_host_range("n[3:1]")


# -- INI -------------------------------------------------------------------------------------


INI = """
# a comment
bastion ansible_host=192.0.2.1 ansible_user=ops
; another comment

[gpu]
gpu[1:2] ansible_user=ubuntu
gpu3:2222 ansible_become=True note="two words"  # trailing comment

[gpu:vars]
level=gpu
cuda = 12.4

[phones]
pixel ansible_host=192.168.1.50 ansible_port=8022 ansible_user=u0_a123

[accel:children]
gpu

[accel:vars]
level=accel
from_accel=yes

[all:vars]
level=all
"""


def test_ini_inventory(tmp_path):
    inventory = load_inventory(write(tmp_path / "hosts", INI))
    assert list(inventory.hosts) == ["bastion", "gpu1", "gpu2", "gpu3", "pixel"]
    assert names(inventory.select("ungrouped")) == ["bastion"]
    assert inventory.hosts["bastion"].user == "ops"
    gpu3 = inventory.hosts["gpu3"]
    assert gpu3.groups == ["all", "accel", "gpu"]
    assert (gpu3.port, gpu3.become, gpu3.vars["note"]) == (2222, True, "two words")
    assert gpu3.vars["level"] == "gpu"  # child group beats parent beats all
    assert gpu3.vars["from_accel"] == "yes"
    assert gpu3.vars["cuda"] == 12.4  # values read as Python literals, as Ansible does
    pixel = inventory.hosts["pixel"]
    assert (pixel.port, pixel.user, pixel.vars["level"]) == (8022, "u0_a123", "all")
    assert inventory.groups["accel"].children == ["gpu"]
    assert inventory.hosts["gpu1"].var_pos["ansible_user"].line == 6


def test_ini_reads_group_vars_and_host_vars_directories(tmp_path):
    path = write(tmp_path / "inventory.ini", INI)
    write(tmp_path / "group_vars" / "gpu.yml", "level: gpu-file\n")
    write(tmp_path / "host_vars" / "gpu1.yml", "ansible_user: root\n")
    inventory = load_inventory(path)
    assert inventory.hosts["gpu2"].vars["level"] == "gpu-file"
    assert inventory.hosts["gpu1"].user == "root"
    assert inventory.hosts["gpu2"].user == "ubuntu"


def test_ini_vars_section_may_come_before_its_group(tmp_path):
    path = write(tmp_path / "hosts", "[web:vars]\nx=1\n[web]\nw1\n")
    assert load_inventory(path).hosts["w1"].vars["x"] == 1


# -- patterns --------------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path):
    path = write(
        tmp_path / "fleet.yml",
        """
        all:
          children:
            gpu:
              hosts: {gpu1: , gpu2: , web1: }
            cpu:
              hosts: {cpu1: , web2: }
            web:
              hosts: {web1: , web2: }
            phones:
              hosts: {pixel: }
        """,
    )
    return load_inventory(path)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("all", ["gpu1", "gpu2", "web1", "cpu1", "web2", "pixel"]),
        ("*", ["gpu1", "gpu2", "web1", "cpu1", "web2", "pixel"]),
        ("gpu", ["gpu1", "gpu2", "web1"]),
        ("pixel", ["pixel"]),
        ("gpu*", ["gpu1", "gpu2", "web1"]),  # the group gpu and hosts gpu1, gpu2
        ("*2", ["gpu2", "web2"]),
        ("cpu:phones", ["cpu1", "web2", "pixel"]),
        ("phones,cpu", ["pixel", "cpu1", "web2"]),  # pattern order, as Ansible
        ("gpu:&web", ["web1"]),
        ("gpu:cpu:!web", ["gpu1", "gpu2", "cpu1"]),
        ("!gpu", ["cpu1", "web2", "pixel"]),
        ("~(gpu|cpu)1", ["gpu1", "cpu1"]),
        ("web1:gpu1", ["web1", "gpu1"]),
    ],
)
def test_patterns(fleet, pattern, expected):
    assert names(fleet.select(pattern)) == expected


def test_a_pattern_matching_nothing_names_the_groups(fleet):
    with pytest.raises(NoHostsMatched) as caught:
        fleet.select("gpus")
    message = str(caught.value)
    assert 'no host or group matches "gpus"' in message
    assert 'did you mean "gpu"' in message
    assert "gpu, cpu, web, phones" in message
    assert isinstance(caught.value, ToolkitError)


def test_a_pattern_that_excludes_everything_is_an_error(fleet):
    with pytest.raises(NoHostsMatched, match="selects no hosts"):
        fleet.select("web:!web")
    with pytest.raises(NoHostsMatched):
        fleet.select("gpu:!nosuch")


# -- errors with positions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("all:\n  host:\n    a:\n", 2, 'unknown key "host"'),
        ("all:\n  hosts:\n    a: {ansible_port: ssh}\n", 3, "port number"),
        ("all:\n  hosts:\n    a:\n      port: 70000\n", 4, "between 1 and 65535"),
        ("all:\n  hosts:\n    a: {become: maybe}\n", 3, "not a boolean"),
        ("all:\n  hosts:\n    - a\n", 3, "must be a mapping"),
        ("all:\n  hosts:\n    a: [1]\n", 3, "must be a mapping"),
        ("all:\n  hosts:\n    a:\n  hosts:\n", 4, 'duplicate key "hosts"'),
        ("all:\n  hosts:\n    a: {x: [}\n", 3, "invalid YAML"),
        ("- a\n", 1, "mapping of groups"),
        ("all:\n  children:\n    bad name:\n", 3, "invalid group name"),
        ("all:\n  hosts:\n    'n[5:1]':\n", 3, "range start is after its end"),
        (
            "a:\n  children:\n    b:\n      children:\n        a:\n",
            5,
            "group cycle: a -> b -> a",
        ),
        ("all:\n  hosts:\n    a: {jump: 'x,y'}\n", 3, "only one jump host"),
    ],
)
def test_yaml_errors_point_at_the_line(tmp_path, text, line, message):
    path = write(tmp_path / "bad.yml", text)
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert caught.value.path == str(path)
    assert caught.value.line == line
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("[web]\nw1\n[web:child]\nx\n", 3, 1, 'unknown section kind "child"'),
        ("[web\nw1\n", 1, 1, "bad section header"),
        ("[web]\nw1 ansible_port\n", 2, 4, 'expected "name=value"'),
        ("[web]\n  w1 ansible_port=abc\n", 2, 6, "port number"),
        ("[web]\nw1\n[web:vars]\njust words\n", 4, 1, 'expected "name=value"'),
        ("[web]\nw1\n\n[db:vars]\nx=1\n", 4, 1, "never defined"),
        ("[web]\nw[3:1]\n", 2, 1, "range start"),
        ("[web]\nw1 note='open\n", 2, 1, "cannot parse host line"),
    ],
)
def test_ini_errors_point_at_line_and_column(tmp_path, text, line, col, message):
    path = write(tmp_path / "hosts.ini", text)
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert (caught.value.line, caught.value.col) == (line, col)
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{path}:{line}:{col}: ")


def test_an_error_in_a_vars_file_points_into_that_file(tmp_path):
    path = write(tmp_path / "hosts.yml", "all:\n  hosts:\n    a:\n")
    vars_file = write(tmp_path / "host_vars" / "a.yml", "# comment\nansible_port: many\n")
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert (caught.value.path, caught.value.line) == (str(vars_file), 2)


def test_a_missing_inventory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml: inventory not found"):
        load_inventory(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="nope.ini: inventory not found"):
        load_inventory(tmp_path / "nope.ini")


def test_an_empty_inventory_has_only_the_builtin_groups(tmp_path):
    inventory = load_inventory(write(tmp_path / "empty.yml", "# nothing yet\n"))
    assert inventory.hosts == {}
    assert list(inventory.groups) == ["all", "ungrouped"]
    with pytest.raises(NoHostsMatched):
        inventory.select("all")


# -- hosts toolkit cannot work on, connection defaults from the command line --------------------


def test_unreachable_connection_types_are_kept_with_the_reason(tmp_path):
    path = write(
        tmp_path / "hosts.ini",
        """
        [web]
        w1
        win1 ansible_connection=winrm
        [net]
        sw1 ansible_connection=network_cli
        """,
    )
    inventory = load_inventory(path)  # the inventory loads: only a play targeting them fails
    assert inventory.hosts["w1"].unsupported is None
    assert inventory.hosts["win1"].unsupported == (
        f'host win1: connection "winrm" (set at {path}:3) is not one toolkit can reach; '
        "it speaks ssh and local only"
    )
    assert "network_cli" in inventory.hosts["sw1"].unsupported


def test_become_user_other_than_root_is_refused_only_with_become(tmp_path):
    path = write(
        tmp_path / "hosts.ini",
        """
        a ansible_become=true ansible_become_user=postgres
        b ansible_become=false ansible_become_user=postgres
        c ansible_become=true ansible_become_user=root
        """,
    )
    hosts = load_inventory(path).hosts
    assert 'ansible_become_user "postgres" is not supported' in hosts["a"].unsupported
    assert hosts["b"].unsupported is None and hosts["c"].unsupported is None


def test_command_line_defaults_yield_to_the_inventory(tmp_path):
    path = write(
        tmp_path / "hosts.ini",
        """
        plain
        own ansible_ssh_user=admin ansible_ssh_private_key_file=/k ansible_become=no
        """,
    )
    defaults = {
        "ansible_user": "ops",
        "ansible_ssh_private_key_file": "/cli",
        "ansible_become": True,
    }
    hosts = load_inventory(path, defaults=defaults).hosts
    assert (hosts["plain"].user, hosts["plain"].key_file, hosts["plain"].become) == (
        "ops",
        "/cli",
        True,
    )
    assert (hosts["own"].user, hosts["own"].key_file, hosts["own"].become) == ("admin", "/k", False)


def test_connection_vars_render_their_templates(tmp_path):
    path = write(
        tmp_path / "hosts.yml",
        """
        all:
          vars: {domain: lan, ansible_host: "{{ inventory_hostname }}.{{ domain }}"}
          hosts: {gpu1: }
        """,
    )
    assert load_inventory(path).hosts["gpu1"].address == "gpu1.lan"


def test_ipv6_host_lines_are_hosts_not_sections(tmp_path):
    path = write(tmp_path / "hosts", "[v6]\n[2001:db8::1]:2022 role=a\n[::1]:22\n")
    inventory = load_inventory(path)
    assert names(inventory.select("v6")) == ["2001:db8::1", "::1"]
    assert inventory.hosts["2001:db8::1"].port == 2022
    assert names(inventory.select("2001:db8::1")) == ["2001:db8::1"]


def test_a_play_sees_inventory_chains_rendered_to_the_end(tmp_path):
    """Issue 15: "{{ models_dir }}/x.gguf" gave the literal "{{ app_dir }}/models/x.gguf"."""
    from toolkit.site import load_site

    for app in ("app", "data"):  # a path: source must name a file on the workstation
        write(tmp_path / app / "models" / "x.gguf", "GGUF")
    inventory = write(
        tmp_path / "hosts.ini",
        f"""
        [gpu]
        g1
        [gpu:vars]
        app_dir={tmp_path}/app
        models_dir="{{{{ app_dir }}}}/models"
        """,
    )
    playbook = write(
        tmp_path / "site.yml",
        f"""
        - hosts: gpu
          runtimes: {{llamacpp: }}
          models:
            - name: m
              runtime: llamacpp
              source: {{path: "{{{{ models_dir }}}}/x.gguf"}}
              sha256: "{"0" * 64}"
        """,
    )
    site = load_site(playbook, inventory)
    (play,) = site.plays
    model = site.play_for(play, site.inventory.hosts["g1"]).models[0]
    assert model.source["path"] == f"{tmp_path}/app/models/x.gguf"
    # group_vars/ beside the playbook win over the inventory's
    write(tmp_path / "playbooks" / "group_vars" / "gpu.yml", f"app_dir: {tmp_path}/data\n")
    moved = write(tmp_path / "playbooks" / "site.yml", playbook.read_text())
    site = load_site(moved, inventory)
    model = site.play_for(site.plays[0], site.inventory.hosts["g1"]).models[0]
    assert model.source["path"] == f"{tmp_path}/data/models/x.gguf"
