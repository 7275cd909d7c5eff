#!/usr/bin/env python3
"""Where the cost of following every packet goes: this checkout's tracer next to experiment
copies of it, each with one part of the work taken out, side by side in one bench/tools.py run.

    sudo /usr/bin/python3 bench/costsplit.py [--only discard,noemit,...] [--rounds 5] [tools.py args]
    python3 bench/costsplit.py --make DIR [--only ...]     # only build the copies (no root)

(root, builds the lab; on the shared development machines under the lab lock:
/work/tools/roottest.sh /usr/bin/python3 bench/costsplit.py)

Each experiment is a copy of the committed tree (`git archive HEAD`) with one small patch. They
are measurements, not features: the copies lose output on purpose and are never committed.
  discard  user space takes every record out of the ring unread (consumer position set to the
           producer's): the kernel's work and the ring's wake-ups stay, the Python reading and
           handling of the records goes
  noemit   the kernel keeps every path as usual but never writes it to the ring (no ring copy,
           nothing for user space): the kernel's bookkeeping alone
  parse    the kernel parses and matches each packet and returns before its path is touched
           (no path map, skb map, delivery bookkeeping, ring): the parse alone
  nowake   the kernel never asks for a wake-up (user space polls every 100 ms): what the
           wake-ups every 256 records cost
  batch    a prototype of counting healthy deliveries in the kernel: past the first 5,000
           delivered packets per CPU, a delivered packet's path is not emitted; its ID goes into a
           per-CPU batch emitted every 62 IDs (one 512-byte record), which user space adds to the
           delivered count and ID list as the stream counts a lone delivery past the quota. (The
           IDs of the last partial batches are not flushed at the stop, and a second record of an
           ID within the settle window is not joined to a batched one: not an implementation.)
  bpass    (measured as b: traffic the filter does not match) the pass hooks' programs return
           at once, the delivery and drop hooks work as usual: what the parse and filter of every
           packet at the pass hooks cost untraced traffic
  bfull    (measured as b) the pass hooks' programs whole (nothing compiled out), returning at
           once: what their size and prologue cost, against bpass
  bskb     (measured as b) the pass hooks' programs read the skb's header fields (head, tail,
           network and MAC header offsets), then return: the parse's first step alone
  bnone    (measured as b) every program returns at once: what pktpath attached costs beyond
           its programs' work (its process, maps, program size), against the empty-program floor
  shape    what an EXACT batch costs (docs/DESIGN.md, "An exact delivered batch"): past the first
           5,000 per CPU, a delivered path (up to 12 hops) whose shape (flows, tunnel, NAT, port;
           per hop hook, kind, flags, device, namespace) equals this CPU's template for its flow
           (16 slots) goes into a per-CPU batch as what varies per packet (ID, first time stamp,
           skb, template tag, per-hop dt and CPU: 104 bytes, 32 per record), from which user
           space could rebuild the record; a new shape replaces the template and is emitted
           once (1,400 bytes). User space does the per-ID checks an exact version needs (each ID
           against the records held, twice, and against the other batches of the last ~2,000)
           and counts the rest. (Not flushed at the stop, colliding IDs not rebuilt: a cost
           model, not an implementation.)
The run is bench/tools.py with `--only c,<the experiments>,bt_count,b,floor` and one `--also
x_<name>=<copy>` each (`--also-b` for bpass, bfull, bskb and bnone; without c experiments, c
and bt_count are left out): the tools' ratios, intervals and a bpf_stats pass with every program's
ns per run and each tracer's user-space CPU. Pool several runs with bench/pooled.py (tools.py
`--save RUN.json`, passed through).
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _sub(old, new, count=1):
    """A patch: replace `old` (which must be there) by `new(old)`."""
    def apply(text):
        if old not in text:
            raise SystemExit("costsplit: the patch's anchor is gone (the code changed): %r"
                             % old[:60])
        return text.replace(old, new(old), count)
    return apply


PASS_CALL = "    return pp_handle(ctx, skb, PP_HK(hook, PP_KIND_PASS), 0, 0, direct);\n"
TP_BTF_ENTRY = 'return "int %s(u64 *ctx)\\n{\\n    return %s;\\n}\\n" % (fn, _call(index, hook))'
SKB_FIELDS_READ = "    if (start == 0xffff || start >= s.tail)\n        return 0;\n\n"
B_EXPERIMENTS = ("bpass", "bfull", "bskb", "bnone")     # measured as b, against the floor
EMIT = "    /* emit only the hops recorded, not the empty slots */\n"
SUMMARY_CALL = "    return pp_summary(ctx, skb, hook, kind, location, reason, sk, &p, flags, now,\n"
CONSUME = "        cons = _U64.unpack_from(self._cons, 0)[0]\n        prod = _U64.unpack_from(data, 0)[0]\n"
BATCH_C = r"""/* EXPERIMENT (bench/costsplit.py): delivered packets past the first 5000 per CPU: IDs batched */
struct pp_dbatch { u64 magic; u32 n; u32 events; u64 ids[62]; };
BPF_PERCPU_ARRAY(dbatch, struct pp_dbatch, 1);
static __always_inline int pp_batch_id(u64 id, u32 hops)
{
    u32 zero = 0;
    struct pp_dbatch *b = dbatch.lookup(&zero);
    if (!b)
        return 0;
    if (b->magic < 5000) {
        b->magic++;
        return 0;
    }
    u32 n = b->n;
    if (n >= 62)
        n = 0;
    b->ids[n] = id;
    b->events += hops;
    n++;
    if (n == 62) {
        b->magic = ~0ULL;
        b->n = n;
        if (events.ringbuf_output(b, sizeof(*b), pp_wakeup()) < 0)
            pp_lost(id);
        n = 0;
        b->events = 0;
    }
    b->n = n;
    return 1;
}

"""
BATCH_PY = '''    add = stream.record_adder(records.path_key, records.KIND_DELIVER, records.PATH_KEY_FIELDS)
    import struct
    magic, hdr = b"\\xff" * 8, struct.Struct("<II")
    ids = stream.streamed_ids

    def handle(rec):   # EXPERIMENT (bench/costsplit.py): batched delivered IDs
        if rec[:8] == magic:
            n, ev = hdr.unpack_from(rec, 8)
            stream.streamed += n
            stream.events += ev
            ids.frombytes(rec[16:16 + 8 * n])
            return
        add(rec)
    return handle
'''

SHAPE_C = r"""/* EXPERIMENT (bench/costsplit.py `shape`): the cost of an exact batch. Past the first 5000
 * delivered packets per CPU, a delivered path whose shape (flows, tunnel, NAT, port, and per hop:
 * hook, kind, flags, device, namespace) equals this CPU's template for its flow (16 slots) goes
 * into a per-CPU batch as what varies: ID, first time stamp, skb, template tag, per hop dt and
 * CPU (32 per record); a new shape replaces the template and is emitted once. */
#define PP_BN 32
#define PP_BH 12
struct pp_sent { u64 id; u64 fts; u64 skb; u32 tag; u32 n; u32 dts[PP_BH]; u16 cpus[PP_BH]; };
struct pp_sbatch { u64 magic; u32 n; u32 events; struct pp_sent e[PP_BN]; };
struct pp_tmpl { u64 magic; u32 tag; u32 seq; struct pp_path p; };
BPF_PERCPU_ARRAY(sbatch, struct pp_sbatch, 1);
BPF_PERCPU_ARRAY(tmpls, struct pp_tmpl, 16);
BPF_PERCPU_ARRAY(sbcount, u64, 1);
static __always_inline int pp_sbatch(struct pp_path *v, u32 idx, u64 id)
{
    u32 zero = 0;
    u64 *cnt = sbcount.lookup(&zero);
    if (!cnt)
        return 0;
    if (*cnt < 5000) {
        *cnt += 1;
        return 0;
    }
    u32 n = idx + 1;
    if (n > PP_BH || v->nhops != n)
        return 0;
    u32 slot = ((u32)(v->kports * 2654435761u)) >> 28;
    struct pp_tmpl *t = tmpls.lookup(&slot);
    struct pp_sbatch *b = sbatch.lookup(&zero);
    if (!t || !b)
        return 0;
    if (!t->seq)
        goto miss;
    u64 *a = (u64 *)v, *c = (u64 *)&t->p;
    if (a[5] != c[5] || a[6] != c[6])
        goto miss;
#pragma unroll
    for (int w = 12; w < 29; w++)
        if (a[w] != c[w])
            goto miss;
#pragma unroll
    for (int i = 0; i < PP_BH; i++) {   /* (past nhops: zeros, from pathinit) */
        u32 *x = (u32 *)&v->hops[i], *y = (u32 *)&t->p.hops[i];
        if (x[1] != y[1] || x[2] != y[2] || x[3] != y[3] || x[5] != y[5] || x[6] != y[6] ||
            x[7] != y[7] || x[8] != y[8])
            goto miss;
    }
    goto hit;
miss:
    bpf_probe_read_kernel(&t->p, sizeof(t->p), v);
    t->seq++;
    t->magic = ~1ULL;
    t->tag = (bpf_get_smp_processor_id() << 24) | (slot << 20) | (t->seq & 0xfffff);
    if (events.ringbuf_output(t, sizeof(*t), pp_wakeup()) < 0) {
        t->seq = 0;
        return 0;
    }
hit:;
    u32 k = b->n & (PP_BN - 1);
    struct pp_sent *e = &b->e[k];
    e->id = id;
    e->fts = v->first_ts;
    e->skb = v->skb;
    e->tag = t->tag;
    e->n = n;
#pragma unroll
    for (int i = 0; i < PP_BH; i++) {
        e->dts[i] = v->hops[i].dt;
        e->cpus[i] = v->hops[i].cpu;
    }
    b->events += n;
    k++;
    if (k == PP_BN) {
        b->magic = ~0ULL;
        b->n = k;
        if (events.ringbuf_output(b, sizeof(*b), pp_wakeup()) < 0)
            pp_lost(id);
        k = 0;
        b->events = 0;
    }
    b->n = k;
    return 1;
}

"""
SHAPE_PY = '''    add = stream.record_adder(records.path_key, records.KIND_DELIVER, records.PATH_KEY_FIELDS)
    import collections, struct
    from array import array
    hdr, BATCH, TMPL = struct.Struct("<II"), 16 + 32 * 104, 1400
    raw, tmpls, window, pend = stream.raw, {}, set(), collections.deque()
    ids_buf = stream.streamed_ids.buf

    def handle(rec):   # EXPERIMENT (bench/costsplit.py `shape`): what an exact batch costs here
        size = len(rec)
        if size == BATCH:
            n, ev = hdr.unpack_from(rec, 8)
            ids = array("Q", memoryview(rec)[16:16 + 104 * n].cast("Q")[::13].tolist())
            # an exact version's checks per ID: a record of it held (when the batch's bucket
            # closes, and again when it is due), another batch of it in the window
            c1 = list(filter(raw.__contains__, ids))
            s = set(ids)
            c2 = s & window
            window.update(s)
            pend.append(s)
            if len(pend) > 2000:
                window.difference_update(pend.popleft())
            c3 = list(filter(raw.__contains__, ids))
            if c1 or c2 or c3:
                stream.conflicts = getattr(stream, "conflicts", 0) + 1
            stream.streamed += n
            stream.events += ev
            ids_buf.extend(ids)
            return
        if size == TMPL:
            tmpls[rec[8:12]] = rec
            return
        add(rec)
    return handle
'''

EXPERIMENTS = {
    "discard": {"pktpath/collect/ringbuf.py": [_sub(CONSUME, lambda o: o + (
        "        if True:   # EXPERIMENT (bench/costsplit.py): every record discarded unread\n"
        "            if prod != cons:\n"
        "                _U64.pack_into(self._cons, 0, prod)\n"
        "            return 0\n"))]},
    "noemit": {"bpf/pktpath.c": [_sub(EMIT, lambda o: (
        "    if (idx < 1000) return;   /* EXPERIMENT (bench/costsplit.py): emit nothing */\n"
        + o))]},
    "parse": {"bpf/pktpath.c": [_sub(SUMMARY_CALL, lambda o: (
        "    if (now) return 0;   /* EXPERIMENT (bench/costsplit.py): parse only, no path */\n"
        + o))]},
    "bpass": {"bpf/pktpath.c": [_sub(PASS_CALL, lambda o: (
        "    if (direct >= 0) return 0;   /* EXPERIMENT (bench/costsplit.py): pass hooks idle */\n"
        + o))]},
    "bfull": {"bpf/pktpath.c": [_sub(PASS_CALL, lambda o: (
        "    if (skb != 1)\n"
        "        return 0;   /* EXPERIMENT (bench/costsplit.py): returns at once */\n"
        + o))]},
    "bskb": {"bpf/pktpath.c": [_sub(SKB_FIELDS_READ, lambda o: o + (
        "    if (kind == PP_KIND_PASS && s.head != 1)\n"
        "        return 0;   /* EXPERIMENT (bench/costsplit.py): skb fields only */\n"))]},
    "bnone": {"pktpath/collect/program.py": [_sub(TP_BTF_ENTRY, lambda o: o.replace(
        "{\\n    return",
        "{\\n    if (ctx[0] != 1) return 0;   /* EXPERIMENT: idle */\\n    return"))]},
    "nowake": {"pktpath/collect/program.py": [_sub('d["PP_WAKEUP_EVERY"] = 256',
                                                    lambda o: 'd["PP_WAKEUP_EVERY"] = 1 << 30')]},
    "batch": {
        "bpf/pktpath.c": [
            _sub("/* Emit path `v` (its hops up to `idx` + 1) to user space. */",
                 lambda o: BATCH_C + o),
            _sub("    pp_emit(v, idx, id);\n    paths.delete(&key);\n", lambda o: (
                "    if (kind != PP_KIND_DELIVER ||\n"
                "        !pp_batch_id(id, idx + 1 > PP_MAX_HOPS ? PP_MAX_HOPS : idx + 1))\n"
                "        pp_emit(v, idx, id);\n    paths.delete(&key);\n"))],
        "pktpath/process/pipeline.py": [_sub(
            "    return stream.record_adder(records.path_key, records.KIND_DELIVER, "
            "records.PATH_KEY_FIELDS)\n", lambda o: BATCH_PY)]},
    "shape": {
        "bpf/pktpath.c": [
            _sub("/* The open path of packet key->id that this sighting continues",
                 lambda o: SHAPE_C + o),
            _sub("    pp_emit(v, idx, id);\n    paths.delete(&key);\n", lambda o: (
                "    if (kind != PP_KIND_DELIVER || !pp_sbatch(v, idx, id))\n"
                "        pp_emit(v, idx, id);\n    paths.delete(&key);\n"))],
        "pktpath/process/pipeline.py": [_sub(
            "    return stream.record_adder(records.path_key, records.KIND_DELIVER, "
            "records.PATH_KEY_FIELDS)\n", lambda o: SHAPE_PY)]},
}


def make(names, where):
    """The experiment copies of HEAD under `where`: {name: directory}."""
    out = {}
    for name in names:
        d = os.path.join(where, "exp-" + name)
        os.makedirs(d)
        archive = subprocess.run(["git", "-C", ROOT, "archive", "HEAD"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", d], input=archive, check=True)
        for path, patches in EXPERIMENTS[name].items():
            p = os.path.join(d, path)
            with open(p) as f:
                text = f.read()
            for patch in patches:
                text = patch(text)
            with open(p, "w") as f:
                f.write(text)
        out[name] = d
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(EXPERIMENTS),
                    help="comma-separated experiments (of %s)" % ", ".join(EXPERIMENTS))
    ap.add_argument("--make", metavar="DIR", help="only build the copies under DIR")
    args, rest = ap.parse_known_args()
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad:
        raise SystemExit("costsplit: unknown experiment(s) %s" % ", ".join(bad))
    if args.make:
        for name, d in make(names, args.make).items():
            print("%-8s %s" % (name, d))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        dirs = make(names, tmp)
        cs = [n for n in names if n not in B_EXPERIMENTS]
        bs = [n for n in names if n in B_EXPERIMENTS]
        configs = (["c"] + ["x_" + n for n in cs] + ["bt_count"] if cs else []) + \
            ["b"] + ["x_" + n for n in bs] + ["floor"]
        cmd = [sys.executable, os.path.join(HERE, "tools.py"), "--only", ",".join(configs)]
        for name, d in dirs.items():
            cmd += ["--also-b" if name in B_EXPERIMENTS else "--also", "x_%s=%s" % (name, d)]
        return subprocess.call(cmd + rest)


if __name__ == "__main__":
    sys.exit(main())
