"""The `drops` command's stream: detail dicts (events/dropinfo.py) and symbolized count snapshots
in, text lines, --json objects and --record lines out. The same object replays a recording
(`report` of a drops recording), so both give the same output.

A drops recording is JSON Lines: {"type": "meta", "recording": "drops", ...}, then in order
{"type": "drop", <detail>} and {"type": "interval", "seconds": S, "counts": [...]}, and last
{"type": "end", "counts": [...], "flows": [...], "lost": N, "netns_names": {...}}.
"""
import json

from pktpath.errors import UserError
from pktpath.output import drophints
from pktpath.output import drops as out

RECORDING = "drops"


class DropMonitor:
    """`write(text)`: where the text goes (stdout); `json_out`: an open --json file or None;
    `rec`: a recording.RecordingWriter or None; `netns_names`: {inode (str): name}."""

    def __init__(self, write, netns_names, json_out=None, rec=None):
        self.write, self.netns_names = write, netns_names
        self.json_out, self.rec = json_out, rec
        self.shown = {}             # (location, reason) -> details shown, whole run
        self._shown_iv = {}         # the same since the last interval
        self._previous = None       # counts at the last interval
        self._hinted = set()
        self.details = 0
        self.final = None           # finish()'s facts, for the HTML page (output/html.py)

    def detail(self, d):
        # NETFILTER_DROP: the netfilter hook, from the stack (see netfilter_hook)
        d.setdefault("nf_hook", netfilter_hook(d.get("stack"))
                     if d["reason"] == "NETFILTER_DROP" else None)
        key = (d["location"], d["reason"])
        self.shown[key] = self.shown.get(key, 0) + 1
        self._shown_iv[key] = self._shown_iv.get(key, 0) + 1
        self.details += 1
        text = out.detail_line(d)
        if d["reason"] not in self._hinted:
            self._hinted.add(d["reason"])
            h = drophints.hint(d["reason"])
            if h:
                text += "\n  hint (%s): %s" % (d["reason"], h)
        self.write(text)
        if self.json_out is not None:
            self.json_out.write(json.dumps(d, separators=(",", ":")) + "\n")
        if self.rec is not None:
            self.rec._write("drop", d)

    def interval(self, counts, seconds):
        """Every --interval: the drops counted since the last one (exact), and how many of them
        were not shown."""
        counts = [tuple(c) for c in counts]
        table = out.drop_table(counts, str, {}, self.netns_names, out.as_dict(self._previous or ()))
        more = out.more_lines(counts, self._shown_iv, self._previous)
        self.write("== drops in the last %gs (exact counts) ==\n%s%s"
                   % (seconds, table, "".join("\n" + m for m in more)))
        if self.rec is not None:
            self.rec._write("interval", {"seconds": seconds, "counts": counts})
        self._previous, self._shown_iv = counts, {}

    def finish(self, counts, flows, lost=0, duration_s=None, skipped=None):
        """At the end: the whole run's counts, the details not shown, the top flows, the hints;
        the --json summary object and the recording's end line. `skipped`: runs of the drop
        monitor's program the kernel skipped (recursion misses: those drops are not counted),
        None where they could not be read."""
        counts = [tuple(c) for c in counts]
        self.final = {"counts": counts, "flows": flows, "lost": lost, "duration_s": duration_s,
                      "netns_names": dict(self.netns_names), "shown": dict(self.shown)}
        total = sum(c[3] for c in counts)
        nshown = sum(self.shown.values())
        exact = ("exact" if not skipped else
                 "%d more not counted: the kernel skipped the monitor's program %d times, "
                 "already running on that CPU" % (skipped, skipped))
        parts = ["== all drops counted (%d, %s; %d shown in detail, %d not shown%s) ==\n%s"
                 % (total, exact, nshown, max(0, total - nshown),
                    ", %d details lost: ring buffer full" % lost if lost else "",
                    out.drop_table(counts, str, {}, self.netns_names)),
                 ]
        more = out.more_lines(counts, self.shown)
        if more:
            parts.append("\n".join(more))
        parts.append("== top flows dropped ==\n" + out.top_flows(flows, self.netns_names))
        reasons = {c[1] for c in counts}
        parts.append("== hints ==\n" + out.hints_section(reasons))
        self.write("\n\n".join(parts))
        if self.json_out is not None:
            summary = out.summary_object(counts, flows, self.shown, lost, duration_s)
            if skipped is not None:
                summary["drops_not_counted"] = skipped
            self.json_out.write(json.dumps(summary) + "\n")
        if self.rec is not None:
            end = {"counts": counts, "flows": flows, "lost": lost,
                   "duration_s": duration_s, "netns_names": self.netns_names}
            if skipped is not None:
                end["recursion_misses"] = skipped
            self.rec.end(end)


# frames above the drop's location: the probe and kfree_skb itself
_OWN_FRAMES = ("bpf_prog_", "bpf_trace_run", "kfree_skb", "sk_skb_reason_drop", "__kfree_skb")


def clean_stack(frames):
    """A drop's stack from its location down: the probe's and kfree_skb's frames removed."""
    i = 0
    while i < len(frames) and (frames[i] or "").startswith(_OWN_FRAMES):
        i += 1
    return frames[i:]


# ---- NETFILTER_DROP: which netfilter hook dropped it. The kernel keeps no trace of the table,
# chain or rule at the drop (no netfilter tracepoint; the skb holds none of it), but the drop's
# stack shows the hook: the caller of nf_hook_slow, and the table type (nftables or legacy
# iptables) and family from the frames above it. ----

# caller of nf_hook_slow (or nf_hook_slow_list) -> (family, hook)
NF_HOOK_CALLERS = {
    "ip_rcv": ("ipv4", "PREROUTING"), "ip_list_rcv": ("ipv4", "PREROUTING"),
    "ip_sublist_rcv": ("ipv4", "PREROUTING"), "ip_local_deliver": ("ipv4", "INPUT"),
    "ip_forward": ("ipv4", "FORWARD"), "__ip_local_out": ("ipv4", "OUTPUT"),
    "ip_output": ("ipv4", "POSTROUTING"), "ip_mc_output": ("ipv4", "POSTROUTING"),
    "ipv6_rcv": ("ipv6", "PREROUTING"), "ipv6_list_rcv": ("ipv6", "PREROUTING"),
    "ip6_sublist_rcv": ("ipv6", "PREROUTING"), "ip6_input": ("ipv6", "INPUT"),
    "ip6_forward": ("ipv6", "FORWARD"), "__ip6_local_out": ("ipv6", "OUTPUT"),
    "ip6_output": ("ipv6", "POSTROUTING"), "ip6_finish_output2": ("ipv6", "POSTROUTING"),
    "arp_rcv": ("arp", "INPUT"), "arp_xmit": ("arp", "OUTPUT"),
    "br_handle_frame": ("bridge", "PREROUTING"), "br_pass_frame_up": ("bridge", "INPUT"),
    "__br_forward": ("bridge", "FORWARD"), "br_forward_finish": ("bridge", "POSTROUTING"),
    "br_dev_queue_push_xmit": ("bridge", "POSTROUTING"),
    "__netif_receive_skb_core": ("netdev", "INGRESS"), "nf_hook_ingress": ("netdev", "INGRESS"),
    "nf_hook_egress": ("netdev", "EGRESS"), "__dev_queue_xmit": ("netdev", "EGRESS"),
}
# a frame above nf_hook_slow -> what the rules are
NF_TABLE_TYPES = (("nft_do_chain", "nftables"), ("ipt_do_table", "iptables-legacy"),
                  ("ip6t_do_table", "ip6tables-legacy"), ("arpt_do_table", "arptables-legacy"),
                  ("ebt_do_table", "ebtables-legacy"))


def _func(frame):
    return (frame or "").split("+", 1)[0].split(" ", 1)[0]


def netfilter_hook(stack):
    """"ipv4 INPUT (nftables)" from a NETFILTER_DROP's symbolized stack (frames from the drop's
    location down), or None when the stack does not show it."""
    funcs = [_func(f) for f in stack or ()]
    for i, fn in enumerate(funcs):
        if fn not in ("nf_hook_slow", "nf_hook_slow_list"):
            continue
        j = i + 1
        while j < len(funcs) and funcs[j] in ("nf_hook_slow_list", "nf_hook", "NF_HOOK"):
            j += 1
        where = NF_HOOK_CALLERS.get(funcs[j]) if j < len(funcs) else None
        if not where:
            return None
        kind = next((name for above in funcs[:i] for table_fn, name in NF_TABLE_TYPES
                     if above == table_fn), None)
        return "%s %s%s" % (where[0], where[1], " (%s)" % kind if kind else "")
    return None


def is_drops_recording(path):
    """Whether `path` is a recording of the `drops` command (its meta line says so)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        meta = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("recording") == RECORDING


def replay(path, write, json_out=None):
    """Feed a drops recording through a DropMonitor: the output of the live run."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or lines[0].get("recording") != RECORDING:
        raise UserError("%s: not a drops recording" % path)
    meta, end = lines[0], None
    names = dict(meta.get("netns_names") or {})
    for rec in lines[1:]:
        if rec.get("type") == "end":
            end = rec
            names.update(rec.get("netns_names") or {})
    mon = DropMonitor(write, names, json_out=json_out)
    for rec in lines[1:]:
        kind = rec.pop("type", None)
        if kind == "drop":
            mon.detail(rec)
        elif kind == "interval":
            mon.interval(rec["counts"], rec["seconds"])
    if end is None:
        write("%s: no end line: the run was interrupted, no summary" % path)
        return mon
    mon.finish(end["counts"], end["flows"], end.get("lost", 0), end.get("duration_s"),
               end.get("recursion_misses"))
    return mon
