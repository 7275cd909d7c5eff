"""YAML config + command-line overrides -> one frozen `Config` (pure Python).

Every problem is a `ConfigError` whose message is one line, `SOURCE: KEY: problem`, where SOURCE
is the file name or `command line`. Absent or null keys mean "match any" / the default.
"""
import difflib
import ipaddress
import os
from dataclasses import asdict, dataclass, fields

import yaml

from pktpath.errors import UserError

METHODS = ("auto", "tracepoint", "raw_tracepoint", "kprobe", "kretprobe", "fentry")
KINDS = ("pass", "drop", "deliver", "consume", "segment", "state", "reader")
BYTEORDERS = {"big": "big", "network": "big", "little": "little", "host": "little"}
KEYS = ("shost", "dhost", "sip", "dip", "vxlan_port", "geneve_port", "proto", "port", "udp_port",
        "packet_id", "hooks", "netns", "host", "ringbuf_pages")
OVERRIDE_KEYS = KEYS + ("id_offset", "id_byteorder", "id_from")
PROTOS = ("udp", "tcp", "any")
ID_FROM = ("payload", "headers")
HOOK_KEYS = ("name", "method", "target", "skb_arg", "kind")
CMDLINE = "command line"


class ConfigError(UserError):
    """A bad config value; str() is one line `SOURCE: KEY: problem`."""


@dataclass(frozen=True)
class HookSpec:
    """One `hooks:` item. None fields are taken from the hook catalog (method: else `auto`)."""
    name: str
    method: str = None
    target: str = None
    skb_arg: int = None
    kind: str = None


@dataclass(frozen=True)
class Config:
    """The validated configuration. None filters match anything."""
    shost: str = None
    dhost: str = None
    sip: str = None
    dip: str = None
    vxlan_port: int = 4789       # None: VXLAN not parsed
    geneve_port: int = 6081      # None: Geneve not parsed
    port: int = None             # destination port of the inner transport header (alias udp_port)
    proto: str = "udp"           # traced transport protocol: udp, tcp or any (both)
    id_offset: int = 0
    id_byteorder: str = "big"
    id_from: str = "payload"     # packet key: the payload's ID, or a hash of header fields
    hooks: tuple = None          # tuple of HookSpec, or None = the catalog's default set
    netns: tuple = ()            # netns names (str) or inodes (int); empty = all
    host: str = None
    ringbuf_pages: int = 4096
    source: str = None           # the YAML file, or None

    @property
    def udp_port(self):
        """The old name of `port` (still accepted in configs and on the command line)."""
        return self.port

    def to_dict(self):
        """JSON-ready dict (for recording metadata); hooks become names or mappings."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.hooks is not None:
            d["hooks"] = [h.name if h == HookSpec(h.name) else
                          {k: v for k, v in asdict(h).items() if v is not None} for h in self.hooks]
        d["netns"] = list(self.netns)
        return d


def _short(value):
    """repr() of a value, cut to keep the message on one short line."""
    r = repr(value).replace("\n", " ")
    return r if len(r) <= 60 else r[:57] + "..."


class _Checker:
    """Validators bound to one source; each raises ConfigError naming SOURCE and KEY."""

    def __init__(self, source):
        self.source = source

    def fail(self, key, problem):
        raise ConfigError("%s: %s: %s" % (self.source, key, problem))

    def int(self, key, value, lo, hi):
        if isinstance(value, str) and value.strip().isdecimal():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(key, "must be an integer %d-%d, got %s" % (lo, hi, _short(value)))
        return value

    def choice(self, key, value, choices):
        if not isinstance(value, str) or value.lower() not in choices:
            self.fail(key, "must be one of %s, got %s" % (", ".join(choices), _short(value)))
        return value.lower()

    def ip(self, key, value):
        """An IPv4 or IPv6 address, in its canonical text."""
        try:
            if isinstance(value, str):
                a = ipaddress.ip_address(value.strip())
                if a.version == 4 and a.packed == bytes(4):
                    self.fail(key, "0.0.0.0 matches nothing; leave the key out to match any")
                return str(a)
        except ValueError:
            pass
        self.fail(key, "must be an IPv4 or IPv6 address like 192.0.2.1 or 2001:db8::1, got %s"
                  % _short(value))

    def string(self, key, value):
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "must be a non-empty string, got %s" % _short(value))
        return value.strip()

    def mapping(self, key, value, allowed):
        if not isinstance(value, dict):
            self.fail(key, "must be a mapping, got %s" % _short(value))
        for k in value:
            if k not in allowed:
                name = k if isinstance(k, str) and k.isprintable() and k.split() == [k] \
                    else _short(k)
                self.unknown("%s.%s" % (key, name) if key else name, k, allowed)
        return value

    def unknown(self, where, name, allowed):
        close = difflib.get_close_matches(str(name), allowed, n=1)
        self.fail(where, "unknown key" + (" (did you mean '%s'?)" % close[0] if close else ""))

    def items(self, key, value):
        """A list (a scalar counts as a list of one)."""
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return [value]
        self.fail(key, "must be a list, got %s" % _short(value))

    def hook(self, key, item):
        if isinstance(item, str):
            return HookSpec(self.string(key, item))
        if not isinstance(item, dict):
            self.fail(key, "must be a hook name or a mapping with a 'name', got %s" % _short(item))
        self.mapping(key, item, HOOK_KEYS)
        if item.get("name") is None:
            self.fail(key, "a hook mapping needs a 'name'")
        spec = {"name": self.string(key + ".name", item["name"])}
        if item.get("method") is not None:
            spec["method"] = self.choice(key + ".method", item["method"], METHODS)
        if item.get("target") is not None:
            target = self.string(key + ".target", item["target"])
            if ":" in target and not all(target.split(":", 1)):
                self.fail(key + ".target", "a tracepoint is 'category:name', got %s"
                          % _short(target))
            spec["target"] = target
        if item.get("skb_arg") is not None:
            spec["skb_arg"] = self.int(key + ".skb_arg", item["skb_arg"], 0, 5)
        if item.get("kind") is not None:
            spec["kind"] = self.choice(key + ".kind", item["kind"], KINDS)
        return HookSpec(**spec)

    def hooks(self, key, value):
        specs = tuple(self.hook("%s[%d]" % (key, i), item)
                      for i, item in enumerate(self.items(key, value)))
        if not specs:
            self.fail(key, "an empty list traces nothing; leave the key out for the default set")
        seen = set()
        for i, spec in enumerate(specs):
            if spec.name in seen:
                self.fail("%s[%d]" % (key, i), "hook '%s' listed twice" % spec.name)
            seen.add(spec.name)
        return specs

    def netns(self, key, value):
        out = []
        for i, item in enumerate(self.items(key, value)):
            if isinstance(item, str):
                out.append(self.string("%s[%d]" % (key, i), item))
            else:
                out.append(self.int("%s[%d]" % (key, i), item, 1, 2 ** 32 - 1))
        return tuple(out)

    def pages(self, key, value):
        n = self.int(key, value, 1, 65536)
        if n & (n - 1):
            self.fail(key, "must be a power of two (1, 2, 4, ... 65536), got %d" % n)
        return n


def _fields(raw, source):
    """Validate a dict of config keys into Config field values (null values are skipped)."""
    c = _Checker(source)
    allowed = OVERRIDE_KEYS if source == CMDLINE else KEYS
    c.mapping("", raw, allowed)
    out = {}
    for key, value in raw.items():
        if value is None:
            if key in ("vxlan_port", "geneve_port"):
                out[key] = None    # null: that tunnel is not parsed
            continue
        if key in ("shost", "dhost", "sip", "dip"):
            out[key] = c.ip(key, value)
        elif key in ("vxlan_port", "geneve_port") and source == CMDLINE and value in (0, "0"):
            out[key] = None     # --geneve-port 0 (as null in YAML): that tunnel is not parsed
        elif key in ("vxlan_port", "geneve_port"):
            out[key] = c.int(key, value, 1, 65535)
        elif key in ("port", "udp_port"):
            if "port" in out and out.get("_port_key") != key:
                c.fail(key, "give either port or its old name udp_port, not both")
            out["port"] = c.int(key, value, 1, 65535)
            out["_port_key"] = key
        elif key == "proto":
            out[key] = c.choice(key, value, PROTOS)
        elif key == "id_from":
            out[key] = c.choice(key, value, ID_FROM)
        elif key == "packet_id":
            c.mapping(key, value, ("offset", "byteorder", "from"))
            if value.get("from") is not None:
                out["id_from"] = c.choice(key + ".from", value["from"], ID_FROM)
            if value.get("offset") is not None:
                out["id_offset"] = c.int(key + ".offset", value["offset"], 0, 64)
            if value.get("byteorder") is not None:
                out["id_byteorder"] = BYTEORDERS[c.choice(key + ".byteorder", value["byteorder"],
                                                          tuple(BYTEORDERS))]
        elif key == "id_offset":
            out[key] = c.int(key, value, 0, 64)
        elif key == "id_byteorder":
            out[key] = BYTEORDERS[c.choice(key, value, tuple(BYTEORDERS))]
        elif key == "hooks":
            out[key] = c.hooks(key, value)
        elif key == "netns":
            out[key] = c.netns(key, value)
        elif key == "host":
            out[key] = c.string(key, value)
        elif key == "ringbuf_pages":
            out[key] = c.pages(key, value)
    out.pop("_port_key", None)
    return out


def _read_yaml(path):
    """The YAML mapping in `path` ({} for an empty file), or ConfigError."""
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = " line %d, column %d:" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = (e.problem or e.context or "syntax error").replace("\n", " ")
        raise ConfigError("%s:%s invalid YAML: %s" % (path, where, problem)) from None
    except yaml.YAMLError as e:   # e.g. ReaderError: bad encoding or control characters
        raise ConfigError("%s: invalid YAML: %s" % (path, str(e).splitlines()[0])) from None
    except RecursionError:
        raise ConfigError("%s: invalid YAML: nested too deeply" % path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("%s: the top level must be a mapping of keys (see configs/vxlan.yaml), "
                          "got %s" % (path, type(data).__name__))
    return data


def load_config(path=None, overrides=None):
    """Config from the YAML file `path` (optional) with `overrides` (command-line values under
    the same key names, plus id_offset/id_byteorder; None values are ignored) applied on top."""
    values = {}
    if path is not None:
        path = os.fspath(path)
        values.update(_fields(_read_yaml(path), path))
    values.update(_fields({k: v for k, v in (overrides or {}).items() if v is not None}, CMDLINE))
    source = CMDLINE if any((overrides or {}).get(k) is not None
                            for k in ("shost", "dhost", "sip", "dip")) else path
    for a, b, what in (("shost", "dhost", "underlay"), ("sip", "dip", "overlay")):
        x, y = values.get(a), values.get(b)
        if x and y and ipaddress.ip_address(x).version != ipaddress.ip_address(y).version:
            raise ConfigError("%s: %s: %s and %s must both be IPv4 or both IPv6 (the %s is one "
                              "family), got %s and %s" % (source, b, a, b, what, x, y))
    vx, gn = values.get("vxlan_port", Config.vxlan_port), values.get("geneve_port",
                                                                     Config.geneve_port)
    if vx and vx == gn:
        raise ConfigError("%s: geneve_port: the same port as vxlan_port (%d)"
                          % (path or CMDLINE, vx))
    return Config(source=path, **values)


def cmdline_number(key, lo=None, hi=None, integer=False, above=None):
    """An argparse `type=` for a numeric flag, checked like a config key: a bad value is a
    one-line ConfigError `command line: KEY: problem` (the CLI prints it, exit 2), the same as a
    bad config value. Bounds: `lo` <= value <= `hi` (either may be None), or value > `above`."""
    def parse(text):
        c = _Checker(CMDLINE)
        s = text.strip() if isinstance(text, str) else text
        try:
            value = int(s, 10) if integer else float(s)
        except (TypeError, ValueError):
            value = None
        ok = value is not None and value == value and value not in (float("inf"), float("-inf"))
        ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi) and \
            (above is None or value > above)
        if not ok:
            what = "an integer" if integer else "a number"
            def g(x):
                return "%d" % x if x == int(x) else "%g" % x
            if above is not None:
                rng = " > %s" % g(above)
            elif lo is not None and hi is not None:
                rng = " %s-%s" % (g(lo), g(hi))
            elif lo is not None:
                rng = " >= %s" % g(lo)
            else:
                rng = " <= %s" % g(hi) if hi is not None else ""
            got = s if value is not None and len(s) <= 60 else _short(text)
            c.fail(key, "must be %s%s, got %s" % (what, rng, got))
        return value
    parse.__name__ = "integer" if integer else "number"
    return parse
