// SPDX-License-Identifier: Apache-2.0
/*
 * vipd_xdp.c - XDP offload of vipd's established connections (issue 17).
 *
 * Two programs, one per interface:
 *   xdp_outside  attached to [director] outside: client -> virtual address frames.
 *                The DESTINATION address/port is rewritten to the real server's.
 *   xdp_inside   attached to [director] inside: real server -> client frames.
 *                The SOURCE address/port is rewritten to the virtual address's.
 *
 * A frame is translated here only if every check below passes and its flow is in
 * `flows`; then: address and port rewritten, the IPv4 header checksum and the
 * TCP/UDP checksum adjusted incrementally (RFC 1624 eqn. 3, the same arithmetic as
 * host/src/wire/checksum.rs), Ethernet dst/src set from the flow, per-flow counters
 * updated, and the frame redirected through the `tx_ports` devmap. TTL / hop limit
 * are left alone, as vipd's user-space path leaves them (it does not decrement).
 *
 * Anything else returns XDP_PASS with the frame untouched, so the libpcap path sees
 * it exactly as without the program: non-IPv4/IPv6 EtherTypes (ARP, VLAN tags), a
 * destination MAC that is not this interface's (multicast, broadcast, another host:
 * vipd decides on those), malformed headers (truncated, bad version, bad lengths, a
 * bad IPv4 header checksum, bad TCP data offset, bad UDP length), IPv4 options,
 * IPv4 fragments, every IPv6 extension header (fragment header included), protocols
 * other than TCP and UDP (ICMP errors are translated in user space), TCP segments
 * with SYN, FIN or RST (which also mark their flow, if any, FLOW_SLOW: its later
 * frames follow them to user space until it removes the entry), flows not in the
 * map, a flow whose egress device is not in `tx_ports`, and everything while the
 * config map's enabled bit is clear.
 *
 * Built by host/build.rs into the vipd binary; by hand:
 *   clang -O2 -g -target bpf -I/usr/include/$(uname -m)-linux-gnu -c vipd_xdp.c -o vipd_xdp.o
 * Loaded by host/src/offload.rs (aya), which mirrors the map layouts below byte for byte.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* ---------------------------------------------------------------- ABI -------
 * Everything in this block is the contract with the user-space loader; host/src/offload.rs
 * restates it byte by byte. All multi-byte address and port fields are in network
 * byte order (exactly the bytes on the wire); counters are host order.
 */

#define SIDE_OUTSIDE 0 /* frames from clients, arriving on the outside interface */
#define SIDE_INSIDE 1  /* frames from real servers, arriving on the inside interface */

#define FAMILY_IPV4 4
#define FAMILY_IPV6 6

/* flows: key (40 bytes, no implicit padding). */
struct flow_key {
	__u8 side;     /* SIDE_OUTSIDE or SIDE_INSIDE: which program looks it up */
	__u8 proto;    /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
	__u8 family;   /* FAMILY_IPV4 or FAMILY_IPV6 */
	__u8 pad0;     /* must be 0 */
	__u8 src[16];  /* source address as in the frame; IPv4 in src[0..4], rest 0 */
	__u8 dst[16];  /* destination address; IPv4 in dst[0..4], rest 0 */
	__be16 sport;  /* source port, network order */
	__be16 dport;  /* destination port, network order */
};

/* flows: value (64 bytes). */
struct flow_value {
	/* Written by user space at insert, read by the program. */
	__u8 addr[16];        /* SIDE_OUTSIDE: new destination (real server);
			       * SIDE_INSIDE: new source (virtual address).
			       * IPv4 in addr[0..4], rest 0. */
	__be16 port;          /* new destination / source port, network order */
	__u8 dst_mac[6];      /* new Ethernet destination: real server / client MAC */
	__u8 src_mac[6];      /* new Ethernet source: the egress interface's MAC */
	__u16 pad0;           /* 0 */
	__u32 egress_ifindex; /* egress device; must be a key of tx_ports */
	__u32 flags;          /* FLOW_SLOW; user space inserts 0 */
	/* Written by the program (atomic adds / plain store); user space reads them and
	 * must not overwrite a live entry (an update resets them). */
	__u64 packets;      /* frames redirected */
	__u64 bytes;        /* their length: Ethernet header to the end of the frame,
			     * as vipd counts frame.len() */
	__u64 last_seen_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last one */
};

/* flow_value.flags: set by the program when a TCP segment with SYN, FIN or RST of
 * this flow went to user space. From then on every frame of the flow goes there
 * too (STAT_SLOW), so nothing sent after the FIN/RST overtakes it through the fast
 * path while user space has not yet removed the entry. */
#define FLOW_SLOW 1u

/* config: ARRAY, one entry (key 0, u32). */
#define CONFIG_ENABLED 1u
struct config {
	__u8 mac[2][6]; /* [SIDE_OUTSIDE], [SIDE_INSIDE]: the interfaces' own MACs; a
			 * frame is translated only if its destination MAC is its
			 * ingress interface's */
	__u32 flags;    /* CONFIG_ENABLED: translate; clear: XDP_PASS everything */
};

/* stats: PERCPU_ARRAY of struct stat, index side * STAT_SLOTS + reason. */
enum stat_reason {
	STAT_REDIRECT = 0,   /* translated and redirected */
	STAT_DISABLED,       /* no config, or CONFIG_ENABLED clear */
	STAT_NOT_IP,         /* EtherType neither IPv4 nor IPv6 (ARP, VLAN, ...) */
	STAT_NOT_FOR_US,     /* destination MAC not the ingress interface's */
	STAT_MALFORMED,      /* truncated / bad lengths / bad IPv4 header checksum ... */
	STAT_IP_OPTIONS,     /* IPv4 IHL > 5 */
	STAT_FRAGMENT,       /* IPv4 MF or offset, IPv6 fragment header */
	STAT_EXT_HEADER,     /* any other IPv6 extension header */
	STAT_OTHER_PROTO,    /* not TCP or UDP (ICMP, ICMPv6, ...) */
	STAT_TCP_CONTROL,    /* TCP with SYN, FIN or RST */
	STAT_MISS,           /* no flow */
	STAT_NO_EGRESS,      /* flow's egress_ifindex not in tx_ports */
	STAT_SLOW,           /* flow marked FLOW_SLOW by an earlier SYN/FIN/RST */
	STAT_REASONS,
};
#define STAT_SLOTS 16
struct stat {
	__u64 packets;
	__u64 bytes;
};

/* ------------------------------------------------------------------ maps ---- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144); /* loader: 2 x [director] table capacity */
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);                    /* ifindex */
	__type(value, struct bpf_devmap_val); /* .ifindex = the same; no devmap program */
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * STAT_SLOTS);
	__type(key, __u32);
	__type(value, struct stat);
} stats SEC(".maps");

_Static_assert(sizeof(struct flow_key) == 40, "flow_key ABI");
_Static_assert(sizeof(struct flow_value) == 64, "flow_value ABI");
_Static_assert(sizeof(struct config) == 16, "config ABI");
_Static_assert(STAT_REASONS <= STAT_SLOTS, "stat slots");

/* --------------------------------------------------------------- helpers ---- */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

static __always_inline int count(__u8 side, __u32 reason, __u64 len, int verdict)
{
	__u32 idx = (__u32)side * STAT_SLOTS + reason;
	struct stat *s = bpf_map_lookup_elem(&stats, &idx);

	if (s) { /* per-CPU slot: no other writer, plain adds */
		s->packets += 1;
		s->bytes += len;
	}
	return verdict;
}

#define PASS(reason) count(side, (reason), frame_len, XDP_PASS)

/* Folds a 32-bit one's complement accumulator to 16 bits (two folds suffice). */
static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/*
 * RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), with `delta` the accumulated ~m + m' of
 * every changed word. The words are taken in memory order (the sum is byte-order
 * independent, RFC 1071 2(B)) as long as HC, m and m' are all read the same way,
 * which they are: every one is a raw __u16 load from the frame or the map value.
 */
static __always_inline __u16 csum_apply(__u16 hc, __u32 delta)
{
	return (__u16)~csum_fold((__u32)(__u16)~hc + csum_fold(delta));
}

/* UDP (RFC 768): a zero checksum means none and stays zero; a computed zero is sent
 * as 0xffff. vipd's checksum::apply_udp does this for both families. */
static __always_inline __u16 csum_apply_udp(__u16 hc, __u32 delta)
{
	__u16 r;

	if (hc == 0)
		return 0;
	r = csum_apply(hc, delta);
	return r == 0 ? 0xffff : r;
}

/*
 * Writes `nwords` 16-bit words from `new` over `old` (in the frame) and returns
 * their checksum difference, sum of ~old + new: at most 8 * 0x1fffe, no overflow.
 */
static __always_inline __u32 rewrite_words(__u16 *old, const __u16 *new, int nwords)
{
	__u32 delta = 0;

#pragma unroll
	for (int i = 0; i < nwords; i++) {
		delta += (__u32)(__u16)~old[i] + new[i];
		old[i] = new[i];
	}
	return delta;
}

static __always_inline int mac_is(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) |
		(a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __always_inline int ipv6_ext_header(__u8 next)
{
	switch (next) {
	case 0:   /* hop-by-hop */
	case 43:  /* routing */
	case 50:  /* ESP */
	case 51:  /* AH */
	case 60:  /* destination options */
	case 135: /* mobility */
	case 139: /* HIP */
	case 140: /* shim6 */
	case 253:
	case 254: /* experimental */
		return 1;
	}
	return 0;
}

/* ----------------------------------------------------------------- program -- */

/*
 * The program body is specialised per side and per family (both compile-time
 * constants after inlining), so no pointer's validity depends on a runtime flag the
 * verifier would have to correlate across branches.
 */

/* TCP/UDP checks, flow lookup, translation. `l4_off` and `ip_end` are offsets from
 * the start of the frame; `addr` points at the address to rewrite; `ip_check` is
 * the IPv4 header checksum (unused for IPv6). */
static __always_inline int vipd_l4(void *data, void *data_end, __u64 frame_len,
				   const __u8 side, const __u8 family, __u8 proto,
				   __u32 l4_off, __u32 ip_end, struct flow_key *key,
				   __u16 *addr, __u16 *ip_check)
{
	struct ethhdr *eth = data;
	struct flow_value *v;
	__u16 *port;     /* the port to rewrite, in the frame */
	__u16 *l4_check; /* TCP or UDP checksum, in the frame */
	__u32 addr_delta, port_delta;
	__u16 new_port;
	__u8 control = 0; /* TCP SYN, FIN or RST */

	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;
		__u32 hdr_len;

		if ((void *)(th + 1) > data_end || l4_off + sizeof(*th) > ip_end)
			return PASS(STAT_MALFORMED);
		hdr_len = th->doff * 4;
		if (hdr_len < sizeof(*th) || l4_off + hdr_len > ip_end)
			return PASS(STAT_MALFORMED);
		control = ((__u8 *)th)[13] & (TCP_FIN | TCP_SYN | TCP_RST);
		key->sport = th->source;
		key->dport = th->dest;
		port = side == SIDE_OUTSIDE ? &th->dest : &th->source;
		l4_check = &th->check;
	} else {
		struct udphdr *uh = data + l4_off;
		__u16 ulen;

		if ((void *)(uh + 1) > data_end || l4_off + sizeof(*uh) > ip_end)
			return PASS(STAT_MALFORMED);
		ulen = bpf_ntohs(uh->len);
		if (ulen < sizeof(*uh) || l4_off + ulen > ip_end)
			return PASS(STAT_MALFORMED);
		key->sport = uh->source;
		key->dport = uh->dest;
		port = side == SIDE_OUTSIDE ? &uh->dest : &uh->source;
		l4_check = &uh->check;
	}
	key->side = side;
	key->proto = proto;
	key->family = family;

	v = bpf_map_lookup_elem(&flows, key);
	/* Opening and closing stay in user space (connection state, timeouts). */
	if (control) {
		if (v)
			v->flags = FLOW_SLOW; /* idempotent plain store, no atomic needed */
		return PASS(STAT_TCP_CONTROL);
	}
	if (!v)
		return PASS(STAT_MISS);
	if (v->flags & FLOW_SLOW)
		return PASS(STAT_SLOW);
	/* Checked before the frame is changed: a frame this program cannot send must
	 * reach user space untouched. */
	if (!bpf_map_lookup_elem(&tx_ports, &v->egress_ifindex))
		return PASS(STAT_NO_EGRESS);

	/* ---------------------------------------------------------- translate ---- */
	if (family == FAMILY_IPV4) {
		addr_delta = rewrite_words(addr, (const __u16 *)v->addr, 2);
		*ip_check = csum_apply(*ip_check, addr_delta);
	} else {
		/* IPv6: no header checksum; the pseudo-header carries the address. */
		addr_delta = rewrite_words(addr, (const __u16 *)v->addr, 8);
	}
	new_port = v->port;
	port_delta = (__u32)(__u16)~*port + new_port;
	*port = new_port;
	if (proto == IPPROTO_TCP)
		*l4_check = csum_apply(*l4_check, addr_delta + port_delta);
	else
		*l4_check = csum_apply_udp(*l4_check, addr_delta + port_delta);
	__builtin_memcpy(eth->h_dest, v->dst_mac, 6);
	__builtin_memcpy(eth->h_source, v->src_mac, 6);

	/*
	 * Per-flow counters: atomic adds on the shared entry rather than a per-CPU map.
	 * One lookup, one copy of the rewrite data, and user space reads one value (no
	 * per-CPU sum, no max over CPUs for last_seen). A flow's frames of one direction
	 * arrive on one RX queue (RSS / one veth NAPI), so the cache line stays with one
	 * CPU and the locked add is uncontended. last_seen_ns is a plain 64-bit store:
	 * atomic on 64-bit targets, and concurrent writers only race to store nearly
	 * equal times.
	 */
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, frame_len);
	v->last_seen_ns = bpf_ktime_get_ns();

	count(side, STAT_REDIRECT, frame_len, 0);
	return bpf_redirect_map(&tx_ports, v->egress_ifindex, 0);
}

static __always_inline int vipd_ipv4(void *data, void *data_end, __u64 frame_len,
				     const __u8 side)
{
	struct iphdr *iph = data + sizeof(struct ethhdr);
	__u16 *w = (void *)iph;
	struct flow_key key;
	__u32 sum = 0;
	__u16 tot_len;
	__u8 proto;

	if ((void *)(iph + 1) > data_end)
		return PASS(STAT_MALFORMED);
	if (iph->version != 4 || iph->ihl < 5)
		return PASS(STAT_MALFORMED);
	if (iph->ihl != 5)
		return PASS(STAT_IP_OPTIONS);
	tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < sizeof(*iph) || sizeof(struct ethhdr) + (__u64)tot_len > frame_len)
		return PASS(STAT_MALFORMED);
	/* vipd drops a bad header checksum (BadIpChecksum): leave the frame to it. */
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	if (csum_fold(sum) != 0xffff)
		return PASS(STAT_MALFORMED);
	if (iph->frag_off & bpf_htons(0x3fff)) /* MF, or a fragment offset */
		return PASS(STAT_FRAGMENT);
	proto = iph->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PASS(STAT_OTHER_PROTO);

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(key.src, &iph->saddr, 4);
	__builtin_memcpy(key.dst, &iph->daddr, 4);
	return vipd_l4(data, data_end, frame_len, side, FAMILY_IPV4, proto,
		       sizeof(struct ethhdr) + sizeof(*iph), sizeof(struct ethhdr) + tot_len,
		       &key,
		       side == SIDE_OUTSIDE ? (__u16 *)&iph->daddr : (__u16 *)&iph->saddr,
		       &iph->check);
}

static __always_inline int vipd_ipv6(void *data, void *data_end, __u64 frame_len,
				     const __u8 side)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct flow_key key;
	__u16 plen;
	__u8 proto;

	if ((void *)(ip6 + 1) > data_end)
		return PASS(STAT_MALFORMED);
	if (ip6->version != 6)
		return PASS(STAT_MALFORMED);
	plen = bpf_ntohs(ip6->payload_len);
	/* 0 is a jumbogram, which Ethernet cannot carry (vipd: BadIpHeader). */
	if (plen == 0 || sizeof(struct ethhdr) + sizeof(*ip6) + (__u64)plen > frame_len)
		return PASS(STAT_MALFORMED);
	proto = ip6->nexthdr;
	if (proto == 44)
		return PASS(STAT_FRAGMENT);
	if (ipv6_ext_header(proto))
		return PASS(STAT_EXT_HEADER);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PASS(STAT_OTHER_PROTO);

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(key.src, &ip6->saddr, 16);
	__builtin_memcpy(key.dst, &ip6->daddr, 16);
	return vipd_l4(data, data_end, frame_len, side, FAMILY_IPV6, proto,
		       sizeof(struct ethhdr) + sizeof(*ip6),
		       sizeof(struct ethhdr) + sizeof(*ip6) + plen, &key,
		       side == SIDE_OUTSIDE ? (__u16 *)&ip6->daddr : (__u16 *)&ip6->saddr,
		       0);
}

static __always_inline int vipd_xdp(struct xdp_md *ctx, const __u8 side)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	struct ethhdr *eth = data;
	struct config *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !(cfg->flags & CONFIG_ENABLED))
		return PASS(STAT_DISABLED);
	if ((void *)(eth + 1) > data_end)
		return PASS(STAT_MALFORMED);
	if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
		return PASS(STAT_NOT_IP);
	if (!mac_is(eth->h_dest, cfg->mac[side]))
		return PASS(STAT_NOT_FOR_US);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return vipd_ipv4(data, data_end, frame_len, side);
	return vipd_ipv6(data, data_end, frame_len, side);
}

SEC("xdp")
int xdp_outside(struct xdp_md *ctx)
{
	return vipd_xdp(ctx, SIDE_OUTSIDE);
}

SEC("xdp")
int xdp_inside(struct xdp_md *ctx)
{
	return vipd_xdp(ctx, SIDE_INSIDE);
}

char LICENSE[] SEC("license") = "Apache-2.0";
