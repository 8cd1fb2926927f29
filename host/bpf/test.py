#!/usr/bin/env python3
"""BPF_PROG_TEST_RUN tests of vipd_xdp.o (python3 stdlib + bpftool; needs root).

Runs itself again inside a fresh network and mount namespace (`unshare --net --mount`):
a private bpffs is mounted there for the pins, and the devmap's devices are a veth pair
created inside that namespace, so nothing outside it is touched and everything (pins,
programs, maps, the veth pair) is gone when the test exits.

Every frame is run through the program with `bpftool prog run` AND through a Python
model of the rules (written from host/src/wire and director/path.rs, not from the C);
the verdict and the output bytes must be identical. Redirected frames are in addition
checked field by field, and every checksum in them is verified by a full recompute.
At the end the per-flow counters and the per-CPU stats are compared with the counts
the model kept.

`cargo test --test xdp_program` runs it on the object build.rs compiled (VIPD_XDP_OBJ) with
vipd's replay fixtures (VIPD_FIXTURES); by hand:

    clang -O2 -target bpf -I/usr/include/$(uname -m)-linux-gnu -c vipd_xdp.c -o vipd_xdp.o
    sudo python3 test.py
"""

import copy
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OBJ = os.environ.get("VIPD_XDP_OBJ", os.path.join(HERE, "vipd_xdp.o"))

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
VERDICT = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}
OUTSIDE, INSIDE = 0, 1
TCP, UDP = 6, 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Stat reasons: must match enum stat_reason in vipd_xdp.c.
STATS = ["redirect", "disabled", "not_ip", "not_for_us", "malformed", "ip_options",
         "fragment", "ext_header", "other_proto", "tcp_control", "miss", "no_egress", "slow"]
STAT_SLOTS = 16
IPV6_EXT = {0, 43, 50, 51, 60, 135, 139, 140, 253, 254}


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def ip4(s):
    return bytes(int(x) for x in s.split("."))


def ip6(s):
    import ipaddress
    return ipaddress.IPv6Address(s).packed


OUT_MAC = mac("02:00:00:00:00:01")     # the director's outside interface
IN_MAC = mac("02:00:00:00:00:02")      # the director's inside interface
CLIENT_MAC = mac("02:00:00:00:0c:01")
ROUTER_MAC = mac("02:00:00:00:0c:02")  # where a client's frames come from
REAL_MAC = mac("02:00:00:00:0a:01")


# --------------------------------------------------------------- checksums -----

def csum_sum(data):
    """Folded one's complement sum (RFC 1071), not complemented."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(src, dst, proto, length):
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def l4_checksum(src, dst, proto, segment):
    """The value to store in a TCP/UDP checksum field (field zeroed in `segment`)."""
    c = 0xFFFF ^ csum_sum(pseudo(src, dst, proto, len(segment)) + segment)
    if proto == UDP and c == 0:
        c = 0xFFFF
    return c


# ------------------------------------------------------------------ frames -----

def ether(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, ttl=64, frag=0x4000, options=b"", tot_len=None,
         bad_csum=False, version=4):
    ihl = 5 + len(options) // 4
    tl = 4 * ihl + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, tl, 0x1234, frag, ttl,
                      proto, 0, src, dst) + options
    c = 0xFFFF ^ csum_sum(hdr)
    if bad_csum:
        c ^= 0x0101
    return hdr[:10] + struct.pack("!H", c) + hdr[12:] + payload


def ipv6(src, dst, nh, payload, hlim=64, plen=None):
    pl = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", 6 << 28, pl, nh, hlim, src, dst) + payload


def tcp(src, dst, sport, dport, flags=ACK | PSH, payload=b"", seq=1000, ack=2000,
        doff=5, options=b""):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0,
                      0) + options
    seg = hdr + payload
    c = l4_checksum(src, dst, TCP, seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(src, dst, sport, dport, payload=b"", zero_csum=False, length=None):
    ln = 8 + len(payload) if length is None else length
    seg = struct.pack("!HHHH", sport, dport, ln, 0) + payload
    if zero_csum:
        return seg
    c = l4_checksum(src, dst, UDP, seg)
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def frame4(src, dst, proto, seg, dmac=OUT_MAC, smac=ROUTER_MAC, **kw):
    return ether(dmac, smac, 0x0800, ipv4(src, dst, proto, seg, **kw))


def frame6(src, dst, proto, seg, dmac=OUT_MAC, smac=ROUTER_MAC, **kw):
    return ether(dmac, smac, 0x86DD, ipv6(src, dst, proto, seg, **kw))


# ------------------------------------------------------------------- model -----

class Model:
    """The program's rules, from vipd's wire::parse and director path, in Python."""

    def __init__(self):
        self.flows = {}      # key bytes -> dict(addr, port, dst_mac, src_mac, ifindex)
        self.tx_ports = set()
        self.enabled = False
        self.macs = (OUT_MAC, IN_MAC)
        self.counts = {}     # key bytes -> [packets, bytes]
        self.stats = {}      # (side, reason) -> [packets, bytes]

    def run(self, side, f):
        """(verdict, output frame, stat reason); self.loose: offset of a checksum
        field to compare modulo 0xffff (see below), or None."""
        self.loose = None
        self.last_key = None
        n = len(f)
        if not self.enabled:
            return XDP_PASS, f, "disabled"
        if n < 14:
            return XDP_PASS, f, "malformed"
        et = struct.unpack("!H", f[12:14])[0]
        if et not in (0x0800, 0x86DD):
            return XDP_PASS, f, "not_ip"
        if f[0:6] != self.macs[side]:
            return XDP_PASS, f, "not_for_us"
        if et == 0x0800:
            if n < 34 or f[14] >> 4 != 4 or f[14] & 15 < 5:
                return XDP_PASS, f, "malformed"
            if f[14] & 15 != 5:
                return XDP_PASS, f, "ip_options"
            tl = struct.unpack("!H", f[16:18])[0]
            if tl < 20 or 14 + tl > n or csum_sum(f[14:34]) != 0xFFFF:
                return XDP_PASS, f, "malformed"
            if struct.unpack("!H", f[20:22])[0] & 0x3FFF:
                return XDP_PASS, f, "fragment"
            proto, fam, src, dst = f[23], 4, f[26:30], f[30:34]
            l4, end = 34, 14 + tl
        else:
            if n < 54 or f[14] >> 4 != 6:
                return XDP_PASS, f, "malformed"
            pl = struct.unpack("!H", f[18:20])[0]
            if pl == 0 or 54 + pl > n:
                return XDP_PASS, f, "malformed"
            proto = f[20]
            if proto == 44:
                return XDP_PASS, f, "fragment"
            if proto in IPV6_EXT:
                return XDP_PASS, f, "ext_header"
            fam, src, dst = 6, f[22:38], f[38:54]
            l4, end = 54, 54 + pl
        if proto not in (TCP, UDP):
            return XDP_PASS, f, "other_proto"
        if proto == TCP:
            if l4 + 20 > n or l4 + 20 > end:
                return XDP_PASS, f, "malformed"
            doff = (f[l4 + 12] >> 4) * 4
            if doff < 20 or l4 + doff > end:
                return XDP_PASS, f, "malformed"
            control = f[l4 + 13] & (FIN | SYN | RST)
            ck = l4 + 16
        else:
            if l4 + 8 > n or l4 + 8 > end:
                return XDP_PASS, f, "malformed"
            ul = struct.unpack("!H", f[l4 + 4:l4 + 6])[0]
            if ul < 8 or l4 + ul > end:
                return XDP_PASS, f, "malformed"
            ck = l4 + 6
            control = 0
        key = flow_key(side, proto, fam, src, dst, f[l4:l4 + 2], f[l4 + 2:l4 + 4])
        self.last_key = key
        v = self.flows.get(key)
        if control:
            if v is not None:
                v["slow"] = True
            return XDP_PASS, f, "tcp_control"
        if v is None:
            return XDP_PASS, f, "miss"
        if v.get("slow"):
            return XDP_PASS, f, "slow"
        if v["ifindex"] not in self.tx_ports:
            return XDP_PASS, f, "no_egress"
        # Translate by a FULL recompute of every checksum over the new bytes (the C
        # does it incrementally: equal results check RFC 1624 eqn. 3 there).
        o = bytearray(f)
        alen = 4 if fam == 4 else 16
        aoff = (30 if fam == 4 else 38) if side == OUTSIDE else (26 if fam == 4 else 22)
        o[aoff:aoff + alen] = v["addr"][:alen]
        poff = l4 + (2 if side == OUTSIDE else 0)
        o[poff:poff + 2] = v["port"]
        if fam == 4:
            o[24:26] = b"\0\0"
            o[24:26] = struct.pack("!H", 0xFFFF ^ csum_sum(bytes(o[14:34])))
            nsrc, ndst = bytes(o[26:30]), bytes(o[30:34])
        else:
            nsrc, ndst = bytes(o[22:38]), bytes(o[38:54])
        old_ck = f[ck:ck + 2]
        self.loose = None
        if not (proto == UDP and old_ck == b"\0\0"):
            osrc, odst = (f[26:30], f[30:34]) if fam == 4 else (f[22:38], f[38:54])
            old_total = csum_sum(pseudo(osrc, odst, proto, end - l4) + f[l4:end])
            o[ck:ck + 2] = b"\0\0"
            if old_total == 0xFFFF:
                # A valid checksum: the output's is the full recompute.
                o[ck:ck + 2] = struct.pack("!H", l4_checksum(nsrc, ndst, proto, bytes(o[l4:end])))
            else:
                # An invalid one stays invalid by the same amount (vipd: the end host
                # drops it, as without the director): the one's complement sum of the
                # segment and pseudo-header is unchanged. 0x0000 and 0xffff are the
                # same value there, so the field is compared modulo 0xffff.
                others = csum_sum(pseudo(nsrc, ndst, proto, end - l4) + bytes(o[l4:end]))
                c = old_total + (0xFFFF ^ others)
                c = (c & 0xFFFF) + (c >> 16)
                o[ck:ck + 2] = struct.pack("!H", c)
                self.loose = ck
        o[0:6] = v["dst_mac"]
        o[6:12] = v["src_mac"]
        c = self.counts.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += n
        return XDP_REDIRECT, bytes(o), "redirect"


def flow_key(side, proto, fam, src, dst, sport, dport):
    """struct flow_key: 40 bytes. Ports are the 2 network-order bytes."""
    return struct.pack("<BBBB16s16s2s2s", side, proto, fam, 0, src, dst, sport, dport)


def flow_value(addr, port, dst_mac, src_mac, ifindex):
    """struct flow_value: 64 bytes; flags and counters start at 0."""
    return struct.pack("<16s2s6s6sHIIQQQ", addr, struct.pack("!H", port), dst_mac,
                       src_mac, 0, ifindex, 0, 0, 0, 0)


# ------------------------------------------------------------ bpftool glue -----

def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s%s" % (" ".join(args), r.stdout, r.stderr))
    return r.stdout


def hexargs(b):
    return ["hex"] + ["%02x" % x for x in b]


class Bpf:
    def __init__(self, pin):
        self.pin = pin
        self.tmp = tempfile.mkdtemp(prefix="vipd_xdp_io_")

    def map_update(self, name, key, value):
        sh("bpftool", "map", "update", "pinned", "%s/maps/%s" % (self.pin, name),
           "key", *hexargs(key), "value", *hexargs(value))

    def map_delete(self, name, key):
        sh("bpftool", "map", "delete", "pinned", "%s/maps/%s" % (self.pin, name),
           "key", *hexargs(key))

    def map_lookup(self, name, key):
        out = json.loads(sh("bpftool", "-j", "map", "lookup", "pinned",
                            "%s/maps/%s" % (self.pin, name), "key", *hexargs(key)))
        if "values" in out:  # per-CPU
            return [bytes(int(x, 16) for x in c["value"]) for c in out["values"]]
        return bytes(int(x, 16) for x in out["value"])

    def run(self, side, frame):
        prog = "xdp_outside" if side == OUTSIDE else "xdp_inside"
        fin, fout = os.path.join(self.tmp, "in"), os.path.join(self.tmp, "out")
        with open(fin, "wb") as fh:
            fh.write(frame)
        if os.path.exists(fout):
            os.unlink(fout)
        out = json.loads(sh("bpftool", "-j", "prog", "run", "pinned",
                            "%s/prog/%s" % (self.pin, prog), "data_in", fin,
                            "data_out", fout))
        with open(fout, "rb") as fh:
            return out["retval"], fh.read()


# ------------------------------------------------------------------- tests -----

class Suite:
    def __init__(self, bpf, model):
        self.bpf, self.m = bpf, model
        self.passed = self.failed = 0
        self.runs = 0
        self.loose_checked = 0  # redirected frames whose input checksum was bad
        self.fixtures = (0, 0)

    def check(self, name, cond, detail=""):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL %s %s" % (name, detail))

    def frame(self, name, side, f, want=None, want_reason=None):
        """Runs `f` through program and model; both must agree byte for byte."""
        verdict, out = self.bpf.run(side, f)
        mv, mo, reason = self.m.run(side, f)
        loose = self.m.loose
        self.runs += 1
        if loose is not None and len(out) == len(mo):
            a = struct.unpack("!H", out[loose:loose + 2])[0]
            b = struct.unpack("!H", mo[loose:loose + 2])[0]
            if a % 0xFFFF == b % 0xFFFF:
                mo = mo[:loose] + out[loose:loose + 2] + mo[loose + 2:]
            self.loose_checked += 1
        st = self.m.stats.setdefault((side, reason), [0, 0])
        st[0] += 1
        st[1] += len(f)
        ok = verdict == mv and out == mo
        self.check(name, ok, "program %s model %s (%s)%s" % (
            VERDICT.get(verdict, verdict), VERDICT[mv], reason,
            "" if out == mo else "\n  out   %s\n  model %s" % (out.hex(), mo.hex())))
        if want is not None:
            self.check(name + " verdict", verdict == want,
                       "got %s want %s" % (VERDICT.get(verdict), VERDICT[want]))
        if want_reason is not None:
            self.check(name + " reason", reason == want_reason,
                       "model reason %s want %s" % (reason, want_reason))
        if verdict == XDP_PASS:
            self.check(name + " unchanged", out == f)
        if verdict == XDP_REDIRECT and loose is None:
            self.check(name + " checksums", checksums_valid(out), out.hex())
        return verdict, out


def checksums_valid(f):
    """Full recompute of the IPv4 header checksum and the TCP/UDP checksum."""
    et = struct.unpack("!H", f[12:14])[0]
    if et == 0x0800:
        ihl = (f[14] & 15) * 4
        if csum_sum(f[14:14 + ihl]) != 0xFFFF:
            return False
        tl = struct.unpack("!H", f[16:18])[0]
        src, dst, proto, l4, end = f[26:30], f[30:34], f[23], 14 + ihl, 14 + tl
    else:
        pl = struct.unpack("!H", f[18:20])[0]
        src, dst, proto, l4, end = f[22:38], f[38:54], f[20], 54, 54 + pl
    seg = f[l4:end]
    if proto == UDP and seg[6:8] == b"\0\0":
        # IPv4: no checksum. IPv6 forbids it (RFC 8200 8.1) but vipd's apply_udp keeps a
        # zero as zero for both families, and so does the program: the receiver drops
        # such an IPv6 datagram as it would without the director.
        return True
    return csum_sum(pseudo(src, dst, proto, len(seg)) + seg) == 0xFFFF


def add_flow(bpf, m, side, proto, src, dst, sport, dport, addr, port, dmac, smac, ifx):
    k = flow_key(side, proto, 4 if len(src) == 4 else 6, src.ljust(16, b"\0"),
                 dst.ljust(16, b"\0"), struct.pack("!H", sport), struct.pack("!H", dport))
    bpf.map_update("flows", k, flow_value(addr.ljust(16, b"\0"), port, dmac, smac, ifx))
    m.flows[k] = dict(addr=addr.ljust(16, b"\0"), port=struct.pack("!H", port),
                      dst_mac=dmac, src_mac=smac, ifindex=ifx)
    return k


def add_pair(bpf, m, fam, proto, cport, if_out, if_in):
    """Both entries of one connection: client:cport -> virtual:80/443 -> real:8080/8443."""
    c, v, r, vp, rp = (C4, V4, R4, 80, 8080) if fam == 4 else (C6, V6, R6, 443, 8443)
    return (add_flow(bpf, m, OUTSIDE, proto, c, v, cport, vp, r, rp, REAL_MAC, IN_MAC, if_in),
            add_flow(bpf, m, INSIDE, proto, r, c, rp, cport, v, vp, ROUTER_MAC, OUT_MAC, if_out))


def conn_frame(fam, side, cport, flags, payload=b"data"):
    """A TCP frame of add_pair()'s connection, as it arrives on `side`."""
    c, v, r, vp, rp = (C4, V4, R4, 80, 8080) if fam == 4 else (C6, V6, R6, 443, 8443)
    mk = frame4 if fam == 4 else frame6
    if side == OUTSIDE:
        return mk(c, v, TCP, tcp(c, v, cport, vp, flags, payload), dmac=OUT_MAC, smac=ROUTER_MAC)
    return mk(r, c, TCP, tcp(r, c, rp, cport, flags, payload), dmac=IN_MAC, smac=REAL_MAC)


def setup(bpf, m, if_out, if_in):
    """Config, tx_ports and the flows the tests use."""
    cfg = struct.pack("<6s6sI", OUT_MAC, IN_MAC, 1)
    bpf.map_update("config", struct.pack("<I", 0), cfg)
    m.enabled = True
    for ifx in (if_out, if_in):
        bpf.map_update("tx_ports", struct.pack("<I", ifx), struct.pack("<II", ifx, 0))
        m.tx_ports.add(ifx)

    def add(*a):
        return add_flow(bpf, m, *a)

    keys = {}
    for proto in (TCP, UDP):
        # IPv4: client 198.51.100.7:40000 -> virtual 192.0.2.10:80 -> real 10.0.0.11:8080
        keys[(4, proto, OUTSIDE)] = add(OUTSIDE, proto, C4, V4, 40000, 80, R4, 8080,
                                        REAL_MAC, IN_MAC, if_in)
        keys[(4, proto, INSIDE)] = add(INSIDE, proto, R4, C4, 8080, 40000, V4, 80,
                                       ROUTER_MAC, OUT_MAC, if_out)
        # IPv6: client 2001:db8:c::7 -> virtual 2001:db8:v::10 -> real fd00::11
        keys[(6, proto, OUTSIDE)] = add(OUTSIDE, proto, C6, V6, 40000, 443, R6, 8443,
                                        REAL_MAC, IN_MAC, if_in)
        keys[(6, proto, INSIDE)] = add(INSIDE, proto, R6, C6, 8443, 40000, V6, 443,
                                       ROUTER_MAC, OUT_MAC, if_out)
    return keys


C4, V4, R4 = ip4("198.51.100.7"), ip4("192.0.2.10"), ip4("10.0.0.11")
C6, V6, R6 = ip6("2001:db8:c::7"), ip6("2001:db8:ffff::10"), ip6("fd00::11")


def hit(fam, proto, side, payload=b"hello, world", flags=ACK | PSH, **kw):
    """A frame of one of setup()'s flows."""
    if side == OUTSIDE:
        src, dst, sp, dp, dmac = (C4, V4, 40000, 80, OUT_MAC) if fam == 4 else \
            (C6, V6, 40000, 443, OUT_MAC)
    else:
        src, dst, sp, dp, dmac = (R4, C4, 8080, 40000, IN_MAC) if fam == 4 else \
            (R6, C6, 8443, 40000, IN_MAC)
    smac = ROUTER_MAC if side == OUTSIDE else REAL_MAC
    dmac = kw.pop("dmac", dmac)
    seg = tcp(src, dst, sp, dp, flags, payload) if proto == TCP else \
        udp(src, dst, sp, dp, payload, zero_csum=kw.pop("zero_csum", False))
    mk = frame4 if fam == 4 else frame6
    return mk(src, dst, proto, seg, dmac=dmac, smac=smac, **kw)


def run_tests(bpf, m, keys, if_out, if_in):
    s = Suite(bpf, m)
    rnd = random.Random(17)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    # 1. Hits, both directions, both families, both protocols; fields checked by hand.
    for fam in (4, 6):
        for proto in (TCP, UDP):
            for side in (OUTSIDE, INSIDE):
                name = "hit ipv%d %s %s" % (fam, "tcp" if proto == TCP else "udp",
                                             "outside" if side == OUTSIDE else "inside")
                f = hit(fam, proto, side)
                v, o = s.frame(name, side, f, want=XDP_REDIRECT)
                if v != XDP_REDIRECT:
                    continue
                l4 = 34 if fam == 4 else 54
                if side == OUTSIDE:
                    want_dst = R4 if fam == 4 else R6
                    got_dst = o[30:34] if fam == 4 else o[38:54]
                    s.check(name + " dst addr", got_dst == want_dst)
                    s.check(name + " dst port", o[l4 + 2:l4 + 4] ==
                            struct.pack("!H", 8080 if fam == 4 else 8443))
                    s.check(name + " src kept", o[l4:l4 + 2] == f[l4:l4 + 2] and
                            (o[26:30] == f[26:30] if fam == 4 else o[22:38] == f[22:38]))
                    s.check(name + " macs", o[0:6] == REAL_MAC and o[6:12] == IN_MAC)
                else:
                    want_src = V4 if fam == 4 else V6
                    got_src = o[26:30] if fam == 4 else o[22:38]
                    s.check(name + " src addr", got_src == want_src)
                    s.check(name + " src port", o[l4:l4 + 2] ==
                            struct.pack("!H", 80 if fam == 4 else 443))
                    s.check(name + " macs", o[0:6] == ROUTER_MAC and o[6:12] == OUT_MAC)
                ttl_off = 22 if fam == 4 else 21
                s.check(name + " ttl/hop limit unchanged", o[ttl_off] == f[ttl_off])

    # 2. UDP checksum rules: zero stays zero (IPv4 "no checksum", and IPv6 as vipd does);
    #    a computed zero is sent as 0xffff.
    for fam in (4, 6):
        f = hit(fam, UDP, OUTSIDE, zero_csum=True)
        v, o = s.frame("udp ipv%d zero checksum stays zero" % fam, OUTSIDE, f, XDP_REDIRECT)
        s.check("udp ipv%d zero checksum stays zero (field)" % fam, o[(34 if fam == 4 else 54) + 6:][:2] == b"\0\0")
        # Payload word chosen so that the TRANSLATED datagram sums to 0xffff: its
        # checksum is 0, transmitted as 0xffff.
        src, dst = (C4, R4) if fam == 4 else (C6, R6)
        dport = 8080 if fam == 4 else 8443
        pay = bytearray(b"zz\0\0")
        seg = udp(src, dst, 40000, dport, bytes(pay))
        seg = seg[:6] + b"\0\0" + seg[8:]
        need = 0xFFFF ^ csum_sum(pseudo(src, dst, UDP, len(seg)) + seg)
        pay[2:4] = struct.pack("!H", need)
        f = hit(fam, UDP, OUTSIDE, payload=bytes(pay))
        v, o = s.frame("udp ipv%d computed zero -> 0xffff" % fam, OUTSIDE, f, XDP_REDIRECT)
        s.check("udp ipv%d computed zero -> 0xffff (field)" % fam,
                o[(34 if fam == 4 else 54) + 6:][:2] == b"\xff\xff", o.hex())

    # 3. Random payloads, addresses stay: checksum arithmetic over many values.
    for i in range(40):
        fam, proto, side = rnd.choice((4, 6)), rnd.choice((TCP, UDP)), rnd.choice((0, 1))
        pay = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 60)))
        s.frame("random payload %d" % i, side, hit(fam, proto, side, payload=pay),
                want=XDP_REDIRECT)

    # 4. Ethernet padding after the IP packet: forwarded whole, counted whole.
    f = hit(4, TCP, OUTSIDE, payload=b"") + b"\0" * 6
    s.frame("ipv4 tcp with ethernet padding", OUTSIDE, f, XDP_REDIRECT)

    # 5. Misses.
    f = frame4(C4, V4, TCP, tcp(C4, V4, 40001, 80))
    s.frame("miss: unknown client port", OUTSIDE, f, XDP_PASS, "miss")
    s.frame("miss: outside frame on the inside program", INSIDE,
            hit(4, TCP, OUTSIDE, dmac=IN_MAC), XDP_PASS, "miss")
    f = frame6(C6, V6, UDP, udp(C6, V6, 40000, 444))
    s.frame("miss: unknown virtual port", OUTSIDE, f, XDP_PASS, "miss")
    f = frame4(C4, V4, UDP, tcp(C4, V4, 40000, 80))  # TCP flow's ports, UDP protocol
    s.frame("miss: other protocol same ports", OUTSIDE, f, XDP_PASS)

    # 6. TCP control segments go to user space and mark their flow FLOW_SLOW: the
    #    flow's later frames in that direction follow them there; the other
    #    direction's entry is not marked. One fresh pair of flows per case.
    cases = ((SYN, "syn"), (SYN | ACK, "syn-ack"), (FIN | ACK, "fin"), (RST, "rst"),
             (RST | ACK, "rst-ack"), (FIN | PSH | ACK, "fin-psh"))
    for fam in (4, 6):
        for side in (OUTSIDE, INSIDE):
            for j, (fl, nm) in enumerate(cases):
                cport = 41000 + 10 * side + j
                add_pair(bpf, m, fam, TCP, cport, if_out, if_in)
                name = "tcp %s ipv%d side %d" % (nm, fam, side)
                s.frame(name, side, conn_frame(fam, side, cport, fl), XDP_PASS, "tcp_control")
                s.frame(name + ", then ack: slow", side, conn_frame(fam, side, cport, ACK),
                        XDP_PASS, "slow")
                s.frame(name + ", other direction still fast", 1 - side,
                        conn_frame(fam, 1 - side, cport, ACK), XDP_REDIRECT)
    s.frame("tcp syn of no flow", OUTSIDE, conn_frame(4, OUTSIDE, 42000, SYN), XDP_PASS,
            "tcp_control")
    s.frame("tcp ack|urg|ece|cwr is translated", OUTSIDE,
            hit(4, TCP, OUTSIDE, flags=ACK | 0x20 | 0x40 | 0x80), XDP_REDIRECT)

    # 7. Fragments, options, extension headers.
    seg = tcp(C4, V4, 40000, 80)
    s.frame("ipv4 more-fragments", OUTSIDE, frame4(C4, V4, TCP, seg, frag=0x2000),
            XDP_PASS, "fragment")
    s.frame("ipv4 fragment offset", OUTSIDE, frame4(C4, V4, TCP, seg, frag=0x0001),
            XDP_PASS, "fragment")
    s.frame("ipv4 DF is fine", OUTSIDE, frame4(C4, V4, TCP, seg, frag=0x4000), XDP_REDIRECT)
    s.frame("ipv4 no flags is fine", OUTSIDE, frame4(C4, V4, TCP, seg, frag=0), XDP_REDIRECT)
    s.frame("ipv4 options (ihl 6)", OUTSIDE,
            frame4(C4, V4, TCP, seg, options=b"\x01\x01\x01\x00"), XDP_PASS, "ip_options")
    s.frame("ipv4 options (ihl 15)", OUTSIDE,
            frame4(C4, V4, TCP, seg, options=b"\x01" * 40), XDP_PASS, "ip_options")
    seg6 = tcp(C6, V6, 40000, 443)
    hbh = bytes([TCP, 0, 1, 4, 0, 0, 0, 0])  # hop-by-hop, PadN
    s.frame("ipv6 hop-by-hop", OUTSIDE, frame6(C6, V6, 0, hbh + seg6), XDP_PASS, "ext_header")
    dst_opts = bytes([TCP, 0, 1, 4, 0, 0, 0, 0])
    s.frame("ipv6 destination options", OUTSIDE, frame6(C6, V6, 60, dst_opts + seg6),
            XDP_PASS, "ext_header")
    s.frame("ipv6 routing header", OUTSIDE,
            frame6(C6, V6, 43, bytes([TCP, 0, 0, 0, 0, 0, 0, 0]) + seg6), XDP_PASS, "ext_header")
    frag = bytes([TCP, 0, 0, 0, 0, 0, 0, 1])
    s.frame("ipv6 fragment header", OUTSIDE, frame6(C6, V6, 44, frag + seg6),
            XDP_PASS, "fragment")
    s.frame("ipv6 atomic fragment", OUTSIDE,
            frame6(C6, V6, 44, bytes([TCP, 0, 0, 0, 0, 0, 0, 0]) + seg6), XDP_PASS, "fragment")

    # 8. Not IP, not TCP/UDP, not for us.
    arp = ether(b"\xff" * 6, ROUTER_MAC, 0x0806, bytes(28))
    s.frame("arp", OUTSIDE, arp, XDP_PASS, "not_ip")
    vlan = OUT_MAC + ROUTER_MAC + b"\x81\x00\x00\x05" + hit(4, TCP, OUTSIDE)[12:]
    s.frame("vlan-tagged ipv4", OUTSIDE, vlan, XDP_PASS, "not_ip")
    icmp = frame4(C4, V4, 1, bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0]))
    s.frame("icmp echo", OUTSIDE, icmp, XDP_PASS, "other_proto")
    icmp6 = frame6(C6, V6, 58, bytes([128, 0, 0, 0, 0, 0, 0, 0]))
    s.frame("icmpv6 echo", OUTSIDE, icmp6, XDP_PASS, "other_proto")
    s.frame("sctp", OUTSIDE, frame4(C4, V4, 132, bytes(12)), XDP_PASS, "other_proto")
    s.frame("other host's mac", OUTSIDE, hit(4, TCP, OUTSIDE, dmac=mac("02:00:00:00:00:99")),
            XDP_PASS, "not_for_us")
    s.frame("broadcast mac", OUTSIDE, hit(4, TCP, OUTSIDE, dmac=b"\xff" * 6),
            XDP_PASS, "not_for_us")
    s.frame("multicast mac", OUTSIDE, hit(6, UDP, OUTSIDE, dmac=mac("33:33:00:00:00:01")),
            XDP_PASS, "not_for_us")
    s.frame("inside mac on outside", OUTSIDE, hit(4, TCP, OUTSIDE, dmac=IN_MAC),
            XDP_PASS, "not_for_us")

    # 9. Malformed.
    good4 = hit(4, TCP, OUTSIDE)
    s.frame("ipv4 bad header checksum", OUTSIDE,
            frame4(C4, V4, TCP, seg, bad_csum=True), XDP_PASS, "malformed")
    s.frame("ipv4 version 5", OUTSIDE, frame4(C4, V4, TCP, seg, version=5), XDP_PASS, "malformed")
    s.frame("ipv4 ihl 4", OUTSIDE, good4[:14] + bytes([0x44]) + good4[15:], XDP_PASS, "malformed")
    s.frame("ipv4 total length past frame", OUTSIDE,
            frame4(C4, V4, TCP, seg, tot_len=20 + len(seg) + 1), XDP_PASS, "malformed")
    s.frame("ipv4 total length < 20", OUTSIDE, frame4(C4, V4, TCP, seg, tot_len=19),
            XDP_PASS, "malformed")
    s.frame("ipv4 total length cuts tcp header", OUTSIDE,
            frame4(C4, V4, TCP, seg, tot_len=20 + 19), XDP_PASS, "malformed")
    s.frame("tcp data offset 4", OUTSIDE,
            frame4(C4, V4, TCP, tcp(C4, V4, 40000, 80, doff=4)), XDP_PASS, "malformed")
    s.frame("tcp data offset past packet", OUTSIDE,
            frame4(C4, V4, TCP, tcp(C4, V4, 40000, 80, doff=15, payload=b"x" * 8)),
            XDP_PASS, "malformed")
    s.frame("tcp with options is translated", OUTSIDE,
            frame4(C4, V4, TCP, tcp(C4, V4, 40000, 80, doff=8,
                                    options=b"\x01\x01\x08\x0a" + bytes(8))), XDP_REDIRECT)
    s.frame("udp length 7", OUTSIDE,
            frame4(C4, V4, UDP, udp(C4, V4, 40000, 80, b"abcd", length=7)), XDP_PASS, "malformed")
    s.frame("udp length past packet", OUTSIDE,
            frame4(C4, V4, UDP, udp(C4, V4, 40000, 80, b"abcd", length=13)), XDP_PASS, "malformed")
    s.frame("udp length shorter than packet is fine", OUTSIDE,
            frame4(C4, V4, UDP, udp(C4, V4, 40000, 80, b"abcd", length=10)), XDP_REDIRECT)
    s.frame("ipv6 payload length 0", OUTSIDE,
            frame6(C6, V6, TCP, seg6, plen=0), XDP_PASS, "malformed")
    s.frame("ipv6 payload length past frame", OUTSIDE,
            frame6(C6, V6, TCP, seg6, plen=len(seg6) + 1), XDP_PASS, "malformed")
    bad6 = bytearray(hit(6, TCP, OUTSIDE))
    bad6[14] = 0x40
    s.frame("ipv6 ethertype with version 4", OUTSIDE, bytes(bad6), XDP_PASS, "malformed")
    for fam, proto in ((4, TCP), (4, UDP), (6, TCP), (6, UDP)):
        f = hit(fam, proto, OUTSIDE, payload=b"")
        for cut in range(14, len(f)):
            s.frame("truncated ipv%d %d at %d" % (fam, proto, cut), OUTSIDE, f[:cut], XDP_PASS)

    # 10. Egress device not in tx_ports: untouched, to user space.
    bpf.map_delete("tx_ports", struct.pack("<I", if_in))
    m.tx_ports.discard(if_in)
    s.frame("egress not in tx_ports", OUTSIDE, hit(4, TCP, OUTSIDE), XDP_PASS, "no_egress")
    bpf.map_update("tx_ports", struct.pack("<I", if_in), struct.pack("<II", if_in, 0))
    m.tx_ports.add(if_in)

    # 11. Disabled.
    bpf.map_update("config", struct.pack("<I", 0), struct.pack("<6s6sI", OUT_MAC, IN_MAC, 0))
    m.enabled = False
    s.frame("disabled", OUTSIDE, hit(4, TCP, OUTSIDE), XDP_PASS, "disabled")
    bpf.map_update("config", struct.pack("<I", 0), struct.pack("<6s6sI", OUT_MAC, IN_MAC, 1))
    m.enabled = True

    # 12. Fuzz: random byte mutations of hit frames; program and model must agree, so
    #     nothing is redirected that the rules do not allow, and nothing is changed
    #     on a PASS.
    bases = [hit(f_, p_, s_, payload=b"fuzz") for f_ in (4, 6) for p_ in (TCP, UDP)
             for s_ in (OUTSIDE, INSIDE)]
    fuzz_redirects = 0
    for i in range(int(os.environ.get("FUZZ", "1000"))):
        side = rnd.choice((OUTSIDE, INSIDE))
        f = bytearray(rnd.choice([b for b in bases]))
        for _ in range(rnd.choice((1, 1, 2, 3))):
            pos = rnd.randrange(len(f)) if rnd.random() < 0.5 else rnd.randrange(12, min(len(f), 60))
            f[pos] = rnd.randrange(256) if rnd.random() < 0.7 else f[pos] ^ (1 << rnd.randrange(8))
        if rnd.random() < 0.2:
            f = f[:rnd.randrange(14, len(f) + 1)]
        v, _ = s.frame("fuzz %d" % i, side, bytes(f))
        fuzz_redirects += v == XDP_REDIRECT

    # 13. vipd's replay fixtures (tests/fixtures/*.pcap: the frames its own tests use,
    #     strays included). Every TCP/UDP 4-tuple in them becomes a flow, then every
    #     frame goes through the program of its side (so this checks the parsing of
    #     real frames vipd's tests use; translations go to placeholder targets).
    fixtures = fixture_frames()
    probe = copy.deepcopy(m)  # finds the keys without touching the model's counts
    for side, name, f in fixtures:
        mv, _, reason = probe.run(side, f)
        if reason == "miss":
            k = probe.last_key
            fam = k[2]
            addr = (R4 if fam == 4 else R6) if side == OUTSIDE else (V4 if fam == 4 else V6)
            ifx = if_in if side == OUTSIDE else if_out
            dmac = REAL_MAC if side == OUTSIDE else ROUTER_MAC
            smac = IN_MAC if side == OUTSIDE else OUT_MAC
            bpf.map_update("flows", k, flow_value(addr.ljust(16, b"\0"), 9000, dmac, smac, ifx))
            m.flows[k] = dict(addr=addr.ljust(16, b"\0"), port=struct.pack("!H", 9000),
                              dst_mac=dmac, src_mac=smac, ifindex=ifx)
            probe.flows[k] = dict(m.flows[k])
            keys[("fixture",) + tuple(k)] = k
    # Their SYN and FIN segments last: a flow enters the map once established, and
    # a control segment would mark it slow for the rest of the run.
    control = [x for x in fixtures if copy.deepcopy(probe).run(x[0], x[2])[2] == "tcp_control"]
    fixture_redirects = 0
    for side, name, f in [x for x in fixtures if x not in control] + control:
        v, _ = s.frame(name, side, f)
        fixture_redirects += v == XDP_REDIRECT
    s.fixtures = (len(fixtures), fixture_redirects)

    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    # 13. Per-flow counters equal what the model counted; last_seen within the run.
    for k in keys.values():
        val = bpf.map_lookup("flows", k)
        packets, nbytes, last = struct.unpack("<QQQ", val[40:64])
        want = m.counts.get(k, [0, 0])
        s.check("flow counters %s" % k.hex(), [packets, nbytes] == want,
                "got %d/%d want %d/%d" % (packets, nbytes, want[0], want[1]))
        if want[0]:
            s.check("flow last_seen %s" % k[:3].hex(), t0 <= last <= t1,
                    "%d not in [%d, %d]" % (last, t0, t1))
        # The rewrite half of the value is untouched by the program.
        s.check("flow value intact %s" % k[:3].hex(),
                val[:36] == flow_value(m.flows[k]["addr"], struct.unpack("!H", m.flows[k]["port"])[0],
                                       m.flows[k]["dst_mac"], m.flows[k]["src_mac"],
                                       m.flows[k]["ifindex"])[:36])
        s.check("flow flags %s" % k[:3].hex(),
                struct.unpack("<I", val[36:40])[0] == (1 if m.flows[k].get("slow") else 0))

    # 14. Per-CPU stats summed over CPUs equal the model's per (side, reason).
    for side in (OUTSIDE, INSIDE):
        for r, name in enumerate(STATS):
            per_cpu = bpf.map_lookup("stats", struct.pack("<I", side * STAT_SLOTS + r))
            got = [sum(struct.unpack("<QQ", c)[i] for c in per_cpu) for i in (0, 1)]
            want = m.stats.get((side, name), [0, 0])
            s.check("stats side %d %s" % (side, name), got == want,
                    "got %s want %s" % (got, want))
    return s, fuzz_redirects


def fixture_frames():
    """(side, name, frame) of every frame in vipd's tests/fixtures/*.{outside,inside}.pcap
    (their MACs are the ones used here: outside 02:..:01, inside 02:..:02)."""
    d = os.environ.get("VIPD_FIXTURES",
                       os.path.join(HERE, "..", "..", "tests", "fixtures"))
    out = []
    if not os.path.isdir(d):
        print("note: no fixtures at %s (set VIPD_FIXTURES); skipped" % d)
        return out
    for fn in sorted(os.listdir(d)):
        if not fn.endswith((".outside.pcap", ".inside.pcap")):
            continue
        side = OUTSIDE if fn.endswith(".outside.pcap") else INSIDE
        with open(os.path.join(d, fn), "rb") as fh:
            data = fh.read()
        magic = struct.unpack("<I", data[:4])[0]
        end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        if struct.unpack(end + "I", data[20:24])[0] != 1:  # LINKTYPE_ETHERNET
            continue
        off, i = 24, 0
        while off + 16 <= len(data):
            incl = struct.unpack(end + "IIII", data[off:off + 16])[2]
            f = data[off + 16:off + 16 + incl]
            off += 16 + incl
            i += 1
            if len(f) >= 14:  # BPF_PROG_TEST_RUN refuses shorter XDP input
                out.append((side, "%s#%d" % (fn, i), f))
    return out


def print_counts(bpf, m):
    print("stats (packets summed over CPUs):")
    for side in (OUTSIDE, INSIDE):
        row = []
        for r, name in enumerate(STATS):
            per_cpu = bpf.map_lookup("stats", struct.pack("<I", side * STAT_SLOTS + r))
            n = sum(struct.unpack("<QQ", c)[0] for c in per_cpu)
            if n:
                row.append("%s=%d" % (name, n))
        print("  %s: %s" % ("outside" if side == OUTSIDE else "inside", " ".join(row)))


def main():
    if os.geteuid() != 0:
        sys.exit("test.py: needs root (BPF_PROG_TEST_RUN, bpffs, a private netns)")
    if not os.path.exists(OBJ):
        sys.exit("test.py: build vipd_xdp.o first (make)")
    if os.environ.get("VIPD_XDP_TEST_NS") != "1":
        # A private netns (its own veth pair, nothing else) and mount ns (private bpffs).
        env = dict(os.environ, VIPD_XDP_TEST_NS="1")
        r = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                            sys.executable] + sys.argv, env=env)
        sys.exit(r.returncode)

    pin = tempfile.mkdtemp(prefix="vipd_xdp_bpffs_")  # no dots: libbpf rewrites them
    bpf = None
    sh("mount", "-t", "bpf", "bpf", pin)
    try:
        sh("bpftool", "prog", "loadall", OBJ, pin + "/prog", "pinmaps", pin + "/maps",
           "type", "xdp")
        sh("ip", "link", "add", "vxout", "type", "veth", "peer", "name", "vxin")
        ifx = {n: json.loads(sh("ip", "-j", "link", "show", "dev", n))[0]["ifindex"]
               for n in ("vxout", "vxin")}
        bpf, m = Bpf(pin), Model()
        keys = setup(bpf, m, ifx["vxout"], ifx["vxin"])
        s, fuzz_redirects = run_tests(bpf, m, keys, ifx["vxout"], ifx["vxin"])
        print("frames run through BPF_PROG_TEST_RUN: %d (fuzz frames redirected: %d, "
              "redirected with a bad transport checksum kept bad: %d)"
              % (s.runs, fuzz_redirects, s.loose_checked))
        print("vipd fixture frames: %d, redirected: %d" % s.fixtures)
        print_counts(bpf, m)
        print("%d passed, %d failed" % (s.passed, s.failed))
        return 1 if s.failed else 0
    finally:
        subprocess.run(["umount", pin])
        os.rmdir(pin)
        if bpf is not None:
            shutil.rmtree(bpf.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
