"""Config loading: defaults, overrides, the shipped configs, and one-line errors for bad input."""
import dataclasses
import json
import os
import tempfile

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from pktpath.config import Config, ConfigError, HookSpec, load_config
from pktpath.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def cfgfile(tmp_path):
    """Write YAML text to a file and return its path."""
    def write(text, name="x.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def error_of(path=None, overrides=None):
    with pytest.raises(ConfigError) as exc:
        load_config(path, overrides)
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, UserError)
    return msg


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    assert (cfg.vxlan_port, cfg.udp_port, cfg.id_offset, cfg.id_byteorder, cfg.ringbuf_pages) == \
        (4789, None, 0, "big", 4096)
    assert cfg.hooks is None and cfg.netns == () and cfg.source is None
    assert cfg.shost is cfg.dhost is cfg.sip is cfg.dip is cfg.host is None


def test_empty_file_and_nulls_are_defaults(cfgfile):
    assert load_config(cfgfile("")) == Config(source=cfgfile(""))
    path = cfgfile("shost: null\nudp_port:\nhooks: ~\npacket_id: null\n")
    assert load_config(path) == Config(source=path)


@pytest.mark.parametrize("name", ["vxlan.yaml", "lab.yaml"])
def test_shipped_configs(name):
    cfg = load_config(os.path.join(ROOT, "configs", name))
    assert (cfg.shost, cfg.dhost, cfg.sip, cfg.dip) == \
        ("192.0.2.1", "192.0.2.2", "198.51.100.1", "198.51.100.2")
    assert (cfg.vxlan_port, cfg.udp_port, cfg.id_offset, cfg.id_byteorder) == \
        (4789, 5000, 0, "big")
    assert cfg.hooks is None and cfg.netns == ()


def test_full_config(cfgfile):
    path = cfgfile("""
shost: 10.0.0.1
dip: 10.1.0.2
vxlan_port: 8472
udp_port: 9000
packet_id: {offset: 8, byteorder: host}
hooks:
  - net_dev_queue
  - {name: my_rcv, method: kprobe, target: vxlan_rcv, skb_arg: 1, kind: pass}
  - {name: tp, target: "skb:kfree_skb", kind: drop}
netns: [pp-ctrB, 4026532315]
host: node-a
ringbuf_pages: 1024
""")
    cfg = load_config(path)
    assert cfg.vxlan_port == 8472 and cfg.udp_port == 9000
    assert (cfg.id_offset, cfg.id_byteorder) == (8, "little")
    assert cfg.hooks == (HookSpec("net_dev_queue"),
                         HookSpec("my_rcv", "kprobe", "vxlan_rcv", 1, "pass"),
                         HookSpec("tp", target="skb:kfree_skb", kind="drop"))
    assert cfg.netns == ("pp-ctrB", 4026532315) and cfg.host == "node-a"
    assert cfg.ringbuf_pages == 1024 and cfg.source == path
    assert load_config(None, {"udp_port": " 5000 "}).udp_port == 5000
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["hooks"][0] == "net_dev_queue" and d["hooks"][1]["target"] == "vxlan_rcv"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.udp_port = 1
    hash(cfg)


def test_overrides_win_and_none_is_ignored(cfgfile):
    path = cfgfile("udp_port: 5000\nsip: 198.51.100.1\npacket_id: {offset: 4, byteorder: little}\n")
    cfg = load_config(path, {"udp_port": 6000, "sip": None, "id_byteorder": "big",
                             "hooks": ["kfree_skb"], "host": "b"})
    assert cfg.udp_port == 6000 and cfg.sip == "198.51.100.1"
    assert (cfg.id_offset, cfg.id_byteorder) == (4, "big")
    assert cfg.hooks == (HookSpec("kfree_skb"),) and cfg.host == "b"


@pytest.mark.parametrize("alias,value", [("network", "big"), ("host", "little"),
                                         ("BIG", "big"), ("little", "little")])
def test_byteorder_aliases(cfgfile, alias, value):
    assert load_config(cfgfile("packet_id: {byteorder: %s}" % alias)).id_byteorder == value


BAD = [
    ("vxlan_port: abc", "vxlan_port", "must be an integer 1-65535, got 'abc'"),
    ("vxlan_port: 0", "vxlan_port", "must be an integer 1-65535, got 0"),
    ("udp_port: 65536", "udp_port", "must be an integer 1-65535, got 65536"),
    ("udp_port: true", "udp_port", "must be an integer 1-65535, got True"),
    ("udp_port: 5000.0", "udp_port", "must be an integer 1-65535, got 5000.0"),
    ("udp_port: [5000]", "udp_port", "must be an integer 1-65535, got [5000]"),
    ("shost: 192.0.2.300", "shost",
     "must be an IPv4 or IPv6 address like 192.0.2.1 or 2001:db8::1, got '192.0.2.300'"),
    ("dip: 2001:db8::zz", "dip", "must be an IPv4 or IPv6 address"),
    ("sip: 3232235777", "sip", "must be an IPv4 or IPv6 address"),
    ("sip: 0.0.0.0", "sip", "0.0.0.0 matches nothing"),
    ("geneve_port: 0", "geneve_port", "must be an integer 1-65535, got 0"),
    ("shost: 192.0.2.1\ndhost: 2001:db8::2", "dhost", "must both be IPv4 or both IPv6"),
    ("geneve_port: 4789", "geneve_port", "the same port as vxlan_port (4789)"),
    ("packet_id: {offset: 65}", "packet_id.offset", "must be an integer 0-64, got 65"),
    ("packet_id: {offset: -1}", "packet_id.offset", "must be an integer 0-64"),
    ("packet_id: {byteorder: middle}", "packet_id.byteorder",
     "must be one of big, network, little, host, got 'middle'"),
    ("packet_id: {ofset: 4}", "packet_id.ofset", "unknown key (did you mean 'offset'?)"),
    ("packet_id: 4", "packet_id", "must be a mapping, got 4"),
    ("unknwn_key: 1", "unknwn_key", "unknown key"),
    ("udp_prot: 5000", "udp_prot", "unknown key (did you mean 'udp_port'?)"),
    ("zzz: 1", "zzz", "unknown key"),
    ("hooks: []", "hooks", "an empty list traces nothing"),
    ("hooks: {name: x}", "hooks", "must be a list"),
    ("hooks: [{method: kprobe}]", "hooks[0]", "a hook mapping needs a 'name'"),
    ("hooks: [{name: x, method: uprobe}]", "hooks[0].method",
     "must be one of auto, tracepoint, raw_tracepoint, kprobe, kretprobe, fentry, got 'uprobe'"),
    ("hooks: [{name: x, kind: accept}]", "hooks[0].kind", "must be one of pass, drop, deliver"),
    ("hooks: [{name: x, skb_arg: 6}]", "hooks[0].skb_arg", "must be an integer 0-5, got 6"),
    ("hooks: [{name: x, target: 'net:'}]", "hooks[0].target", "a tracepoint is 'category:name'"),
    ("hooks: [a, {name: x, trget: y}]", "hooks[1].trget", "unknown key (did you mean 'target'?)"),
    ("hooks: [a, a]", "hooks[1]", "hook 'a' listed twice"),
    ("hooks: [1]", "hooks[0]", "must be a hook name or a mapping with a 'name', got 1"),
    ("netns: [ctr, true]", "netns[1]", "must be an integer 1-4294967295, got True"),
    ("netns: {a: 1}", "netns", "must be a list"),
    ("host: ''", "host", "must be a non-empty string"),
    ("ringbuf_pages: 100", "ringbuf_pages", "must be a power of two"),
    ("ringbuf_pages: 131072", "ringbuf_pages", "must be an integer 1-65536"),
]


@pytest.mark.parametrize("text,key,problem", BAD)
def test_bad_values_one_line_naming_file_and_key(cfgfile, text, key, problem):
    path = cfgfile(text + "\n")
    msg = error_of(path)
    assert msg.startswith("%s: %s: " % (path, key)), msg
    assert problem in msg


def test_exact_messages(cfgfile):
    path = cfgfile("vxlan_port: abc\n")
    assert error_of(path) == "%s: vxlan_port: must be an integer 1-65535, got 'abc'" % path
    path = cfgfile("unknwn_key: 1\nudp_port: 5000\n")
    assert error_of(path).startswith("%s: unknwn_key: unknown key" % path)
    path = cfgfile("udp_portt: 5000\n")
    assert error_of(path) == "%s: udp_portt: unknown key (did you mean 'udp_port'?)" % path


def test_file_problems(cfgfile, tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert error_of(missing) == "%s: cannot read: No such file or directory" % missing
    assert error_of(str(tmp_path)) == "%s: cannot read: Is a directory" % tmp_path
    path = cfgfile("udp_port: 5000\nsip: [1.2.3.4\nvxlan_port: 1\n")
    msg = error_of(path)
    assert msg.startswith("%s: line " % path) and "invalid YAML" in msg
    path = cfgfile("a: 1\n b: 2\n")
    assert error_of(path).startswith("%s: line 2, column 3: invalid YAML: " % path)
    path = cfgfile("- udp_port: 5000\n")
    assert error_of(path).startswith("%s: the top level must be a mapping" % path)
    assert error_of(cfgfile("just a string")).startswith(path + ": the top level")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"udp_port: \xff\xfe\x00\n")
    assert error_of(str(bad)).startswith("%s: invalid YAML" % bad)


def test_command_line_errors_name_the_command_line():
    assert error_of(None, {"udp_port": 70000}) == \
        "command line: udp_port: must be an integer 1-65535, got 70000"
    assert error_of(None, {"id_offset": 99}).startswith("command line: id_offset: ")
    assert error_of(None, {"id_byteorder": "x"}).startswith("command line: id_byteorder: ")
    assert error_of(None, {"dip": "nope"}).startswith("command line: dip: must be an IPv4")
    assert error_of(None, {"hooks": ["a", "a"]}).startswith("command line: hooks[1]: ")
    assert error_of(None, {"bogus": 1}).startswith("command line: bogus: unknown key")


def test_file_error_wins_over_valid_overrides(cfgfile):
    path = cfgfile("udp_port: 0\n")
    assert error_of(path, {"udp_port": 5000}).startswith(path + ": udp_port: ")


# ---- property: arbitrary YAML never raises anything but ConfigError ----
KEYS = ["shost", "dhost", "sip", "dip", "vxlan_port", "udp_port", "packet_id", "hooks", "netns",
        "host", "ringbuf_pages", "offset", "byteorder", "name", "method", "target", "skb_arg",
        "kind"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["192.0.2.1", "big", "host", "kprobe", "net:x", "4789", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers()),
                    inner, max_size=4)), max_leaves=12)
configs = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), values,
                          max_size=6)


@settings(max_examples=300, deadline=None)
@given(configs)
def test_any_yaml_mapping_gives_config_or_config_error(data):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(data, f)
    try:
        cfg = load_config(f.name)
        assert isinstance(cfg, Config)
        json.dumps(cfg.to_dict())
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(f.name + ": ")
    finally:
        os.unlink(f.name)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS + ["id_offset", "id_byteorder"]), values, max_size=4))
def test_any_overrides_give_config_or_config_error(overrides):
    try:
        load_config(None, overrides)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("command line: ")


# ---- IPv6 addresses and the tunnel ports ----

def test_ipv6_addresses_and_geneve_port(cfgfile):
    cfg = load_config(cfgfile("shost: 2001:DB8:1::1\ndhost: 2001:db8:1::2\nsip: 198.51.100.1\n"
                              "dip: 198.51.100.2\ngeneve_port: 6082\n"))
    assert (cfg.shost, cfg.dhost, cfg.geneve_port, cfg.vxlan_port) == \
        ("2001:db8:1::1", "2001:db8:1::2", 6082, 4789)
    assert load_config().geneve_port == 6081
    assert load_config(cfgfile("geneve_port: null\nvxlan_port: null\n")).geneve_port is None
    cli = load_config(overrides={"geneve_port": 0, "vxlan_port": "0"})
    assert (cli.geneve_port, cli.vxlan_port) == (None, None)


def test_cflags_carry_ipv6_filters_and_tunnel_ports(cfgfile):
    import ipaddress
    from pktpath.collect import program
    offsets = {m: 8 * i for i, (m, _s, _p) in enumerate(program.FIELDS)}
    cfg = load_config(cfgfile("shost: 2001:db8:1::1\nsip: 198.51.100.1\ngeneve_port: 6082\n"))
    d = dict(f[2:].split("=", 1) for f in program.cflags(cfg, offsets))
    b = ipaddress.IPv6Address("2001:db8:1::1").packed
    assert d["PP_SHOST6_0"] == "0x%016xULL" % int.from_bytes(b[:8], "little")
    assert d["PP_SHOST6_1"] == "0x%016xULL" % int.from_bytes(b[8:], "little")
    assert "PP_SHOST" not in d and d["PP_SIP"] == "0x016433c6U"
    assert (d["PP_GENEVE_PORT"], d["PP_VXLAN_PORT"]) == ("6082", "4789")
    off = program.cflags(load_config(overrides={"geneve_port": 0}), offsets)
    assert not any(f.startswith("-DPP_GENEVE_PORT=") for f in off)
    # IPv6 + Geneve with 32 bytes of options + IPv6 fit in the header bytes read
    assert program.hdr_len(0) == program.hdr_len(64) == 256


# ---- #18: packet keys from headers, proto and port filters ----
def test_key_proto_port_defaults_and_values(cfgfile):
    cfg = load_config()
    assert (cfg.id_from, cfg.proto, cfg.port, cfg.udp_port) == ("payload", "udp", None, None)
    path = cfgfile("proto: TCP\nport: 443\npacket_id: {from: headers}\n")
    cfg = load_config(path)
    assert (cfg.id_from, cfg.proto, cfg.port, cfg.udp_port) == ("headers", "tcp", 443, 443)
    assert cfg.to_dict()["id_from"] == "headers" and cfg.to_dict()["port"] == 443
    # udp_port is the old name of port, in a file and on the command line
    assert load_config(cfgfile("udp_port: 5000\n")).port == 5000
    assert load_config(None, {"udp_port": "5001"}).port == 5001
    # the command line wins over the file, under either name
    assert load_config(path, {"udp_port": 80, "proto": "any", "id_from": "payload"}) == \
        Config(port=80, proto="any", id_from="payload", source=path)
    assert load_config(cfgfile("port: 1\n"), {"port": 2}).port == 2


@pytest.mark.parametrize("text,key,problem", [
    ("proto: icmp", "proto", "must be one of udp, tcp, any, got 'icmp'"),
    ("proto: 17", "proto", "must be one of udp, tcp, any, got 17"),
    ("port: 0", "port", "must be an integer 1-65535, got 0"),
    ("port: http", "port", "must be an integer 1-65535, got 'http'"),
    ("port: 1\nudp_port: 2", "udp_port", "give either port or its old name udp_port, not both"),
    ("packet_id: {from: hash}", "packet_id.from",
     "must be one of payload, headers, got 'hash'"),
    ("packet_id: {form: headers}", "packet_id.form", "unknown key (did you mean 'from'?)"),
])
def test_key_proto_port_errors_are_one_line(cfgfile, text, key, problem):
    path = cfgfile(text + "\n")
    assert error_of(path) == "%s: %s: %s" % (path, key, problem)


def test_key_proto_port_command_line_errors():
    assert error_of(None, {"proto": "sctp"}) == \
        "command line: proto: must be one of udp, tcp, any, got 'sctp'"
    assert error_of(None, {"id_from": "x"}) == \
        "command line: id_from: must be one of payload, headers, got 'x'"
    assert error_of(None, {"port": "99999"}) == \
        "command line: port: must be an integer 1-65535, got 99999"


def test_cli_rejects_bad_proto_port_with_one_line_and_exit_2():
    import subprocess
    import sys
    run = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "run.py")
    for args, want in ((["--port", "0"], "command line: port: must be an integer 1-65535"),
                       (["--udp-port", "x"], "command line: udp_port: must be an integer"),
                       (["--proto", "sctp"], "invalid choice: 'sctp'")):
        p = subprocess.run([sys.executable, run, *args, "--ebpf"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
        assert want in p.stderr and len(p.stderr.strip().splitlines()) <= 2, p.stderr


def test_cflags_for_keys_protocols_and_ports():
    from pktpath.collect import program
    offsets = {m: 8 * i for i, (m, _s, _p) in enumerate(program.FIELDS)}

    def defines(**ov):
        return dict(f[2:].split("=", 1) for f in program.cflags(load_config(overrides=ov),
                                                                   offsets))
    d = defines()
    assert d["PP_PROTO_UDP"] == "1" and "PP_PROTO_TCP" not in d
    assert "PP_KEY_HEADERS" not in d and "PP_PORT" not in d and d["PP_HDR_LEN"] == "256"
    d = defines(proto="tcp", id_from="headers", udp_port=443)
    assert "PP_PROTO_UDP" not in d and d["PP_PROTO_TCP"] == "1"
    assert d["PP_KEY_HEADERS"] == "1" and d["PP_PORT"] == "443"
    d = defines(proto="any")
    assert d["PP_PROTO_UDP"] == d["PP_PROTO_TCP"] == "1"
    # an inner TCP header may take 60 bytes: still within the header bytes read
    assert program.hdr_len(64, 60) == 512 and program.hdr_len(0, 60) == 256


def test_cflags_leave_out_ipv6_only_where_no_ipv6_flow_can_match(cfgfile):
    """PP_NO_IPV6 (no IPv6 parse) only when an IPv4 address filters both the outer level (or
    no tunnel is parsed) and the traced level; never for the `drops` command."""
    from pktpath.collect import program
    offsets = {m: 8 * i for i, (m, _s, _p) in enumerate(program.FIELDS)}

    def no_v6(text, extra=None, **ov):
        cfg = load_config(cfgfile(text), overrides=ov or None)
        return "-DPP_NO_IPV6=1" in program.cflags(cfg, offsets, extra=extra)
    lab = "shost: 192.0.2.1\ndhost: 192.0.2.2\nsip: 198.51.100.1\ndip: 198.51.100.2\n"
    assert no_v6(lab)
    assert no_v6("dhost: 192.0.2.2\nsip: 198.51.100.1\n")
    assert not no_v6(lab, extra={"PP_DROPS_ONLY": 1, "PP_OFF_SKB_SK": 400})
    # an IPv6 underlay may carry the IPv4 flow; an IPv6 or no inner address may be the flow
    assert not no_v6("sip: 198.51.100.1\ndip: 198.51.100.2\n")
    assert not no_v6("shost: 2001:db8::a\nsip: 198.51.100.1\n")
    assert not no_v6("shost: 192.0.2.1\nsip: 2001:db8:2::1\n")
    assert not no_v6("shost: 192.0.2.1\n")
    # no tunnel parsed: the traced level alone decides
    assert no_v6("sip: 198.51.100.1\nvxlan_port: null\ngeneve_port: null\n")
