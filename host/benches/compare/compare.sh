#!/usr/bin/env bash
# vipd against the directors a user would pick instead, side by side, on one namespace topology.
#
#   client 198.51.100.2 --eth0==vipd-out-- [director] --vipd-in 10.20.0.1-- bridge --+-- A 10.20.0.10 nginx, iperf3
#   VIP 192.0.2.1 (on-link from the client)                                          +-- B 10.20.0.11 nginx
#                                                                                     +-- sink 10.20.0.20 (drops :9)
#
# Contenders (the director namespace and its two veths are created anew for each one, so no state such as
# conntrack hooks or iptables tables leaks from one to the next):
#   none      no director: the director namespace routes (ip_forward=1) and the client talks to A and B
#             directly (two wrk, half the connections each; latency and bulk: A)
#   dnat      iptables DNAT + conntrack in the director namespace, round-robin by `statistic --mode nth`
#   haproxy   HAProxy `mode tcp`, nbthread 1, balance roundrobin
#   nginx     nginx `stream`, one worker (master_process off), round-robin upstream
#   vipd      vipd run, the built-in round-robin
#   vipd-rt   vipd with SCHED_FIFO priority 50 (chrt): woken at once, not after other runnable processes
#   vipd-kstack vipd without the nftables ingress drop (the kernel stack also sees every frame; on demand)
#   vipd-200k vipd, with IDLE half-open connections put in its table first (synflood.py) and held during
#             the measurements (syn timeout 1h; the sink drops the SYNs so nothing closes them)
#   vipd-xdp  vipd with `offload = "xdp"` in native mode: established connections translated by its XDP
#             program (docs/offload.md); GRO is turned on at the peers of the director's veths (the client's
#             eth0, the bridge's port-d), which native XDP needs to redirect into a veth
#   vipd-xdp-generic vipd with `offload = "xdp"`, `xdp_mode = "generic"` (peers as for the others)
#   vipd-wasm vipd with the round-robin Wasm plugin (only when target/plugins/round-robin.wasm exists)
#   vipd-maglev vipd with the maglev plugin (only when target/plugins/maglev.wasm exists)
#   vipd-shadow vipd-wasm with the same plugin asked again as a shadow policy (on demand)
#   vipd-sync vipd as the active director of a pair ([sync] role active, sending to the sink 10.20.0.20:8848
#             over the inside, where the sink's firewall drops it): what connection sync costs; also reports
#             sync records, datagrams and bytes per 1,000 new connections
#   none6, dnat6, vipd6: the same over IPv6, in the default list (beside the IPv4 ones, same run): the
#             client 2001:db8:c::2, VIP 2001:db8:f::1 on-link, servers 2001:db8:1::10/11, DNAT by ip6tables.
#             When one is asked for, every namespace has IPv6 on (duplicate address detection off).
# Rounds alternate the contenders (round 1: all, round 2: all, ...); the table gives medians over rounds.
#
# Figures per contender: new connections/s (wrk, `Connection: close`), keep-alive requests/s (wrk),
# bulk throughput (iperf3 through the VIP, port 5201 bound to A), latency p50/p99 of keep-alive requests
# at moderate load (wrk --latency, LAT_CONNS connections, each pausing LAT_DELAY_MS between requests),
# and CPU seconds of the director process per 100k requests (utime+stime from /proc/PID/stat; not
# attributable for none/dnat, whose work is softirq time).
#
# Usage: host/benches/compare/compare.sh [--doc FILE] [--label TEXT] [CONTENDER...]
#   Environment: DURATION=5 (s per measurement) ROUNDS=3 IDLE=200000 WRK_THREADS=2 WRK_CONNS=32
#   LAT_CONNS=8 LAT_DELAY_MS=1 VIPD=target/release/vipd (built when unset) PLUGIN_DIR=target/plugins
#   WASM_PLUGIN=round-robin MAGLEV_PLUGIN=maglev (plugin files in PLUGIN_DIR) VIPD_KERNEL_DROP=1 (drop the director's IPv4 frames for the
#   kernel stack with an nftables netdev ingress rule after vipd's capture saw them; 0: the kernel sees them)
#   VIPD_BASE=path/to/another/vipd adds the contender `vipd-base`: that binary with vipd's config, to
#   measure an optimisation before/after in the same run (e.g. VIPD_BASE=/tmp/vipd-old ... vipd vipd-base).
#   X1, X2, X3='[director] lines' define the contenders vipd-x1..x3: vipd with those lines added to its
#   config, e.g. X1='send_threads = "none"' ... vipd vipd-x1 (lines separated by ';').
#   FLOOD_RATES="30000 150000" replaces the usual measurements by the flood test: legit new connections/s
#   (wrk, `Connection: close`) before, during and right after a spoofed SYN flood at each rate (SYN/s; the
#   flooder is `cargo build --release --example synflood`, SYNFLOOD=its path; sources 198.51.100.100-249,
#   addresses no host of the topology holds, so every SYN the servers answer stays half-open), for DURATION
#   seconds each; the flood starts 1 s before the "during" load and stops when it ends.
#   PERF=1 records `perf record -g` of vipd during one test (PERF_TEST=conn, ka or bulk) into
#   $OUT_DIR/perf-CONTENDER-TEST-rROUND.data; PERF=all records the whole machine (-a), for every contender.
# Output: a markdown report in OUT_DIR (host/benches/compare/results/), also written between the
# `<!-- compare:begin -->` and `<!-- compare:end -->` markers of --doc FILE when given (the flood test:
# `compare-flood:begin` / `compare-flood:end`). Needs root. Sends
# traffic only inside the namespaces it creates; removes everything on exit, also on Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/../../.."
ROOT=$PWD
HERE=host/benches/compare
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
IDLE=${IDLE:-200000}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-32}
LAT_CONNS=${LAT_CONNS:-8}
LAT_DELAY_MS=${LAT_DELAY_MS:-1}
PLUGIN_DIR=${PLUGIN_DIR:-target/plugins}
WASM_PLUGIN=${WASM_PLUGIN:-round-robin}
MAGLEV_PLUGIN=${MAGLEV_PLUGIN:-maglev}
VIPD_KERNEL_DROP=${VIPD_KERNEL_DROP:-1}
PERF=${PERF:-0}
FLOOD_RATES=${FLOOD_RATES:-}
SYNFLOOD=${SYNFLOOD:-target/release/examples/synflood}
PERF_TEST=${PERF_TEST:-conn}
OUT_DIR=${OUT_DIR:-$HERE/results}
DOC=""
LABEL=""
CONTENDERS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --doc) DOC=$2; shift 2 ;;
        --label) LABEL=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$0"; exit 0 ;;
        *) CONTENDERS+=("$1"); shift ;;
    esac
done

if [[ $EUID -ne 0 ]]; then
    echo "compare: needs root (network namespaces): sudo $0" >&2
    exit 1
fi
for tool in ip ethtool nft nginx wrk iperf3 curl python3 iptables haproxy; do
    command -v "$tool" >/dev/null || { echo "compare: $tool is not installed (make bench installs it)" >&2; exit 1; }
done
STREAM_MODULE=""
for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib64/nginx/modules/ngx_stream_module.so; do
    [[ -f $m ]] && STREAM_MODULE=$m
done

P="vb$$"
NS_CLIENT="$P-client" NS_DIR="$P-dir" NS_LAN="$P-lan" NS_A="$P-a" NS_B="$P-b" NS_SINK="$P-sink"
VIP=192.0.2.1 A=10.20.0.10 B=10.20.0.11 SINK=10.20.0.20
VIP6=2001:db8:f::1 A6=2001:db8:1::10 B6=2001:db8:1::11 SINK6=2001:db8:1::20
# IPv6 on in every namespace only when an IPv6 contender runs (the IPv4 figures stay comparable).
V6=0
for c in "${CONTENDERS[@]}"; do [[ $c == *6 ]] && V6=1; done
[[ ${#CONTENDERS[@]} -eq 0 ]] && V6=1   # the default list has them
TMP=$(mktemp -d /tmp/vipd-compare.XXXXXX)
RESULTS=$TMP/results.tsv
: >"$RESULTS"
PIDS=()           # long-lived: servers
DIR_PIDS=()       # the current contender's processes
CREATED=()

kill_pids() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
cleanup() {
    trap - EXIT INT TERM
    kill_pids "${DIR_PIDS[@]}" "${PIDS[@]}"
    local ns pid
    for ns in "${CREATED[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo; echo "compare: interrupted, cleaning up" >&2; exit 130' INT TERM

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
netns() {
    ip netns add "$1"
    CREATED+=("$1")
    ip -n "$1" link set lo up
    if [[ $V6 == 1 ]]; then
        in_ns "$1" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    else
        in_ns "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    fi
}
offloads_off() { in_ns "$1" ethtool -K "$2" gro off gso off tso off rx off tx off >/dev/null 2>&1 || true; }
veth() {
    ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
    offloads_off "$1" "$2"; offloads_off "$3" "$4"
    ip -n "$1" link set "$2" up
    ip -n "$3" link set "$4" up
}
wait_until() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }   # round contender metric value

# --- the fixed part: client, LAN bridge, servers ------------------------------------------------------------
log "creating namespaces $P-*"
netns "$NS_CLIENT"; netns "$NS_LAN"; netns "$NS_A"; netns "$NS_B"; netns "$NS_SINK"
in_ns "$NS_CLIENT" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
ip -n "$NS_LAN" link add br0 type bridge
ip -n "$NS_LAN" link set br0 up
# A plain bridge: no iptables calls on bridged frames (br_netfilter may be loaded by the host).
for k in iptables ip6tables arptables; do
    in_ns "$NS_LAN" sysctl -qw "net.bridge.bridge-nf-call-$k=0" 2>/dev/null || true
done
for quad in "$NS_A $A $A6 a" "$NS_B $B $B6 b" "$NS_SINK $SINK $SINK6 sink"; do
    read -r ns addr addr6 name <<<"$quad"
    veth "$ns" eth0 "$NS_LAN" "port-$name"
    ip -n "$NS_LAN" link set "port-$name" master br0
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" route add default via 10.20.0.1
    if [[ $V6 == 1 ]]; then
        ip -n "$ns" addr add "$addr6/64" dev eth0 nodad
        ip -n "$ns" route add default via 2001:db8:1::1
    fi
    # tcp_max_tw_buckets: the servers close first (Connection: close), and a contender that keeps the
    # client's address and ports (none, dnat, vipd) would otherwise meet the previous contender's TIME_WAIT
    # sockets on every port and wait for SYN retransmissions.
    in_ns "$ns" sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
        net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 net.ipv4.tcp_max_tw_buckets=1024
done
in_ns "$NS_SINK" iptables -A INPUT -p tcp --dport 9 -j DROP
in_ns "$NS_SINK" iptables -A INPUT -p udp --dport 8848 -j DROP   # vipd-sync's datagrams

server() {   # NS NAME: nginx (one worker) with a small static file, and iperf3 on 5201
    local ns=$1 name=$2 dir="$TMP/nginx-$2"
    mkdir -p "$dir/www"
    printf 'vipd compare: server %s, a small static file of about 100 bytes ..........................\n' \
        "$name" >"$dir/www/index.html"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log crit;
events { worker_connections 8000; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
    server { listen 80 backlog=65535 reuseport; $LISTEN6 root $dir/www; }
}
EOF
    in_ns "$ns" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
    PIDS+=($!)
    in_ns "$ns" iperf3 -s -p 5201 >"$dir/iperf3.log" 2>&1 &
    PIDS+=($!)
}
LISTEN6=""
[[ $V6 == 1 ]] && LISTEN6="listen [::]:80 backlog=65535 reuseport;"
server "$NS_A" a
server "$NS_B" b

# --- the director namespace, anew per contender ------------------------------------------------------------
director_ns() {
    netns "$NS_DIR"
    veth "$NS_DIR" vipd-out "$NS_CLIENT" eth0
    veth "$NS_DIR" vipd-in "$NS_LAN" port-d
    ip -n "$NS_LAN" link set port-d master br0
    ip -n "$NS_DIR" addr add 198.51.100.1/24 dev vipd-out
    ip -n "$NS_DIR" addr add 10.20.0.1/24 dev vipd-in
    in_ns "$NS_DIR" sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.arp_ignore=1 \
        net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=65535 \
        net.ipv4.tcp_max_syn_backlog=65535
    ip -n "$NS_CLIENT" addr add 198.51.100.2/24 dev eth0
    ip -n "$NS_CLIENT" route add 192.0.2.0/24 dev eth0          # the VIP is on-link: the director answers ARP
    ip -n "$NS_CLIENT" route add 10.20.0.0/24 via 198.51.100.1  # only used by `none`
    if [[ $V6 == 1 ]]; then
        ip -n "$NS_DIR" addr add 2001:db8:c::1/64 dev vipd-out nodad
        ip -n "$NS_DIR" addr add 2001:db8:1::1/64 dev vipd-in nodad
        in_ns "$NS_DIR" sysctl -qw net.ipv6.conf.all.forwarding=0
        ip -n "$NS_CLIENT" addr add 2001:db8:c::2/64 dev eth0 nodad
        ip -n "$NS_CLIENT" route add 2001:db8:f::/64 dev eth0               # the VIP on-link: solicitations
        ip -n "$NS_CLIENT" route add 2001:db8:1::/64 via 2001:db8:c::1     # only used by `none6`
        # The previous contender's director had other MACs for the servers' gateway and the VIP, which the
        # neighbour caches keep using while reachable (up to 45 s): no IPv6 kernel announces an address it
        # adds without duplicate address detection. (IPv4 gets away with it: the new director's own ARP
        # requests update the servers' entries for its address.)
        local ns
        for ns in "$NS_CLIENT" "$NS_A" "$NS_B" "$NS_SINK"; do ip -n "$ns" -6 neigh flush all; done
    fi
}
director_ns_del() {
    kill_pids ${DPID:+"$DPID"} "${DIR_PIDS[@]}"
    DIR_PIDS=()
    local pid
    for pid in $(ip netns pids "$NS_DIR" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$NS_DIR" 2>/dev/null || true
    # the client's eth0 went with its peer; wait until the name is free again
    wait_until 5 bash -c "! ip -n $NS_CLIENT link show eth0" || true
}

vipd6_config() {   # > the IPv6 twin of vipd's config
    cat <<EOF
[director]
outside = "vipd-out"
inside = "vipd-in"
max_connections = $((IDLE + 400000))
listen = "127.0.0.1:9469"

[[real]]
name = "a"
address = "$A6"

[[real]]
name = "b"
address = "$B6"

[[virtual]]
name = "bench"
address = "$VIP6"
policy = "round-robin"

  [[virtual.port]]
  port = 80
  bind = ["a", "b"]

  [[virtual.port]]
  port = 5201
  bind = ["a"]
EOF
}

vipd_config() {   # POLICY PLUGINS_DIR(or empty) > config
    cat <<EOF
[director]
outside = "vipd-out"
inside = "vipd-in"
max_connections = $((IDLE + 400000))
listen = "127.0.0.1:9469"
EOF
    [[ -n $2 ]] && printf 'plugins = "%s"\n' "$2"
    cat <<EOF

[timeouts]
syn = "1h"

[[real]]
name = "a"
address = "$A"

[[real]]
name = "b"
address = "$B"

[[real]]
name = "sink"
address = "$SINK"

[[virtual]]
name = "bench"
address = "$VIP"
policy = "$1"

  [[virtual.port]]
  port = 80
  bind = ["a", "b"]

  [[virtual.port]]
  port = 5201
  bind = ["a"]

  [[virtual.port]]
  port = 9
  bind = ["sink"]
EOF
}

if [[ -z "${VIPD:-}" ]]; then
    log "building vipd (cargo build --release -p vipd)"
    cargo build --release -p vipd >&2
    VIPD=target/release/vipd
fi
VIPD=$(realpath "$VIPD")
[[ -n ${VIPD_BASE:-} ]] && VIPD_BASE=$(realpath "$VIPD_BASE")
PLUGIN_ABS=$(realpath -m "$PLUGIN_DIR")
vipd_config round-robin "" >"$TMP/vipd.toml"
vipd6_config >"$TMP/vipd6.toml"
head -c 32 /dev/urandom >"$TMP/sync.key"
{ cat "$TMP/vipd.toml"; printf '\n[sync]\nlisten = "10.20.0.1:8848"\npeers = ["%s:8848"]\nkey_file = "%s"\nrole = "active"\n' \
    "$SINK" "$TMP/sync.key"; } >"$TMP/vipd-sync.toml"
awk '{ print } $0 == "[director]" { print "offload = \"xdp\""; print "xdp_mode = \"native\"" }' \
    "$TMP/vipd.toml" >"$TMP/vipd-xdp.toml"
awk '{ print } $0 == "[director]" { print "offload = \"xdp\""; print "xdp_mode = \"generic\"" }' \
    "$TMP/vipd.toml" >"$TMP/vipd-xdp-generic.toml"
# vipd-x1..x3: vipd with the [director] lines of X1..X3 added (e.g. X1='send_threads = "none"'), to measure
# a setting against the default in the same run.
for x in 1 2 3; do
    var=X$x
    if [[ -n ${!var:-} ]]; then
        awk -v extra="${!var}" '{ print } $0 == "[director]" {
            n = split(extra, l, ";"); for (i = 1; i <= n; i++) { sub(/^ +/, "", l[i]); print l[i] } }' \
            "$TMP/vipd.toml" >"$TMP/vipd-x$x.toml"
    fi
done

# Which contenders run; plugin ones only when their plugin is there and vipd accepts the config.
NOTES=()
plugin_ok() {   # NAME PLUGIN: copies PLUGIN_DIR/PLUGIN.wasm to a folder of its own as NAME.wasm, so that
                # `policy = "NAME"` (e.g. vipd-wasm) can only mean the plugin, never a built-in of that name
    if [[ ! -f $PLUGIN_ABS/$2.wasm ]]; then
        NOTES+=("$1 skipped: $PLUGIN_DIR/$2.wasm does not exist (build the plugins: make plugins)")
        return 1
    fi
    mkdir -p "$TMP/plugins-$1"
    cp "$PLUGIN_ABS/$2.wasm" "$TMP/plugins-$1/$1.wasm"
    vipd_config "$1" "$TMP/plugins-$1" >"$TMP/$1.toml"
    if ! "$VIPD" check --config "$TMP/$1.toml" >"$TMP/$1.check" 2>&1; then
        NOTES+=("$1 skipped: vipd check refused plugin $2.wasm as policy \"$1\": $(head -c 300 "$TMP/$1.check" | tr '\n' ' ')")
        return 1
    fi
}
if [[ ${#CONTENDERS[@]} -eq 0 ]]; then
    CONTENDERS=(none dnat haproxy)
    [[ -n $STREAM_MODULE ]] && CONTENDERS+=(nginx) || NOTES+=("nginx skipped: ngx_stream_module.so not found (Debian: libnginx-mod-stream)")
    CONTENDERS+=(vipd vipd-xdp vipd-xdp-generic vipd-sync vipd-200k none6 dnat6 vipd6)
    [[ -n ${VIPD_BASE:-} ]] && CONTENDERS+=(vipd-base)
    plugin_ok vipd-wasm "$WASM_PLUGIN" && CONTENDERS+=(vipd-wasm)
    plugin_ok vipd-maglev "$MAGLEV_PLUGIN" && CONTENDERS+=(vipd-maglev)
else
    for c in "${CONTENDERS[@]}"; do
        case $c in
            vipd-wasm) plugin_ok vipd-wasm "$WASM_PLUGIN" || { echo "compare: ${NOTES[-1]}" >&2; exit 1; } ;;
            # vipd-shadow: vipd-wasm with the same plugin asked again as a shadow policy (an instance of its
            # own, on the shadow thread), to measure what a shadow costs the live traffic.
            # vipd-wasm-base: vipd-wasm with the VIPD_BASE binary, to measure a plugin host change.
            vipd-wasm-base) plugin_ok vipd-wasm "$WASM_PLUGIN" || { echo "compare: ${NOTES[-1]}" >&2; exit 1; } ;;
            vipd-shadow)
                plugin_ok vipd-wasm "$WASM_PLUGIN" || { echo "compare: ${NOTES[-1]}" >&2; exit 1; }
                sed 's/^policy = "vipd-wasm"$/&\nshadow_policy = "vipd-wasm"/' "$TMP/vipd-wasm.toml" >"$TMP/vipd-shadow.toml" ;;
            vipd-maglev) plugin_ok vipd-maglev "$MAGLEV_PLUGIN" || { echo "compare: ${NOTES[-1]}" >&2; exit 1; } ;;
        esac
    done
fi

# --- contenders: start CONTENDER -> sets TARGET (address the client uses) and DPID (process, or empty) ------
TARGET="" TARGET2="" DPID=""
start_none() {
    in_ns "$NS_DIR" sysctl -qw net.ipv4.ip_forward=1
    TARGET=$A TARGET2=$B   # new conn/s and keep-alive: one wrk per server; latency and bulk: A
}
start_dnat() {
    in_ns "$NS_DIR" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$NS_DIR" addr add "$VIP/32" dev vipd-out
    in_ns "$NS_DIR" iptables -t nat -A PREROUTING -d "$VIP" -p tcp --dport 80 \
        -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination "$A:80"
    in_ns "$NS_DIR" iptables -t nat -A PREROUTING -d "$VIP" -p tcp --dport 80 -j DNAT --to-destination "$B:80"
    in_ns "$NS_DIR" iptables -t nat -A PREROUTING -d "$VIP" -p tcp --dport 5201 -j DNAT --to-destination "$A:5201"
    TARGET=$VIP
}
start_none6() {
    in_ns "$NS_DIR" sysctl -qw net.ipv6.conf.all.forwarding=1
    TARGET=$A6 TARGET2=$B6
}
start_dnat6() {
    in_ns "$NS_DIR" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip -n "$NS_DIR" addr add "$VIP6/128" dev vipd-out nodad
    in_ns "$NS_DIR" ip6tables -t nat -A PREROUTING -d "$VIP6" -p tcp --dport 80 \
        -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination "[$A6]:80"
    in_ns "$NS_DIR" ip6tables -t nat -A PREROUTING -d "$VIP6" -p tcp --dport 80 -j DNAT --to-destination "[$B6]:80"
    in_ns "$NS_DIR" ip6tables -t nat -A PREROUTING -d "$VIP6" -p tcp --dport 5201 -j DNAT --to-destination "[$A6]:5201"
    TARGET=$VIP6
}
start_haproxy() {
    ip -n "$NS_DIR" addr add "$VIP/32" dev vipd-out
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    pidfile $TMP/haproxy.pid
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind $VIP:80
    default_backend web
backend web
    balance roundrobin
    server a $A:80
    server b $B:80
frontend bulk
    bind $VIP:5201
    default_backend bulk
backend bulk
    server a $A:5201
EOF
    spawn_dir "$TMP/haproxy.log" haproxy -db -f "$TMP/haproxy.cfg"
    TARGET=$VIP
}
start_nginx() {
    ip -n "$NS_DIR" addr add "$VIP/32" dev vipd-out
    local dir=$TMP/nginx-stream
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
load_module $STREAM_MODULE;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log crit;
events { worker_connections 8000; }
stream {
    upstream web { server $A:80; server $B:80; }
    upstream bulk { server $A:5201; }
    server { listen $VIP:80 backlog=65535; proxy_pass web; }
    server { listen $VIP:5201; proxy_pass bulk; }
}
EOF
    spawn_dir "$TMP/nginx.log" nginx -p "$dir" -c "$dir/nginx.conf"
    TARGET=$VIP
}
start_vipd_with() {   # CONFIG [BINARY]
    if [[ $VIPD_KERNEL_DROP == 1 ]]; then
        # vipd's packet sockets see each frame before the netdev ingress hook; the kernel's IP stack need
        # not (it would only drop them, ip_forward=0, after a route lookup). ARP still passes.
        # IPv6: the same, but neighbour discovery passes (the servers solicit their gateway, the director's
        # inside address, which the kernel answers).
        in_ns "$NS_DIR" nft -f - <<EOF
table netdev vipd_bench {
    chain outside {
        type filter hook ingress device "vipd-out" priority 0; meta protocol ip drop;
        meta protocol ip6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept; meta protocol ip6 drop;
    }
    chain inside {
        type filter hook ingress device "vipd-in" priority 0; meta protocol ip drop;
        meta protocol ip6 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept; meta protocol ip6 drop;
    }
}
EOF
    fi
    spawn_dir "$TMP/$CUR.log" "${2:-$VIPD}" run --config "$1"
    TARGET=$VIP
}
start_vipd() { start_vipd_with "$TMP/vipd.toml"; }
start_vipd6() { start_vipd_with "$TMP/vipd6.toml"; TARGET=$VIP6; }
start_vipd-200k() { start_vipd_with "$TMP/vipd.toml"; }
start_vipd-sync() { start_vipd_with "$TMP/vipd-sync.toml"; }
start_vipd-rt() { start_vipd_with "$TMP/vipd.toml"; chrt -f -p 50 "$DPID"; }
start_vipd-kstack() { VIPD_KERNEL_DROP=0 start_vipd_with "$TMP/vipd.toml"; }
start_vipd-base() { start_vipd_with "$TMP/vipd.toml" "$VIPD_BASE"; }
start_vipd-xdp() {
    in_ns "$NS_CLIENT" ethtool -K eth0 gro on >/dev/null
    in_ns "$NS_LAN" ethtool -K port-d gro on >/dev/null
    start_vipd_with "$TMP/vipd-xdp.toml"
}
start_vipd-xdp-generic() { start_vipd_with "$TMP/vipd-xdp-generic.toml"; }
start_vipd-wasm() { start_vipd_with "$TMP/vipd-wasm.toml"; }
start_vipd-shadow() { start_vipd_with "$TMP/vipd-shadow.toml"; }
start_vipd-wasm-base() { start_vipd_with "$TMP/vipd-wasm.toml" "$VIPD_BASE"; }
start_vipd-maglev() { start_vipd_with "$TMP/vipd-maglev.toml"; }
start_vipd-x1() { start_vipd_with "$TMP/vipd-x1.toml"; }
start_vipd-x2() { start_vipd_with "$TMP/vipd-x2.toml"; }
start_vipd-x3() { start_vipd_with "$TMP/vipd-x3.toml"; }

serving() {
    if [[ -n $DPID ]] && ! kill -0 "$DPID" 2>/dev/null; then return 2; fi
    in_ns "$NS_CLIENT" curl -sf --max-time 1 -o /dev/null "http://$(url_host "$TARGET")/"
}
url_host() { if [[ $1 == *:* ]]; then echo "[$1]"; else echo "$1"; fi; }   # ADDRESS -> as in a URL

# spawn_dir LOG CMD...: runs CMD in the director namespace; DPID = CMD's own pid (not `ip netns exec`'s).
spawn_dir() {
    local logf=$1 pidf=$TMP/spawn.pid; shift
    rm -f "$pidf"
    in_ns "$NS_DIR" bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" >"$logf" 2>&1 &
    DIR_PIDS+=($!)
    wait_until 5 test -s "$pidf"
    DPID=$(cat "$pidf")
}

ctx_switches() {   # PID -> voluntary + involuntary context switches of all its threads
    [[ -n $1 ]] || { echo 0; return; }
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}
cpu_ticks() {   # PID -> utime+stime in clock ticks
    [[ -n $1 ]] || { echo 0; return; }
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
TCK=$(getconf CLK_TCK)
machine_ticks() {   # -> "idle total" clock ticks of all CPUs since boot (/proc/stat)
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat
}

# wrk_parse FILE -> "rps errors p50us p99us requests"
wrk_parse() {
    awk '
        function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
        /Requests\/sec:/ { rps = $2 }
        /requests in/ { req = $1 }
        /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
        /Non-2xx/ { err += $5 }
        $1 == "50%" { p50 = us($2) }
        $1 == "99%" { p99 = us($2) }
        END { printf "%s %d %s %s %s\n", rps + 0, err, p50 + 0, p99 + 0, req + 0 }
    ' "$1"
}

# load FILE [WRK ARGS...]: closed-loop wrk against TARGET; for `none`, one wrk per server (half the threads
# and connections each, results summed), so the ceiling also uses both servers. Prints "rps errors requests".
load() {
    local f=$1; shift
    if [[ -n $TARGET2 ]]; then
        local half_t=$(((WRK_THREADS + 1) / 2)) half_c=$((WRK_CONNS / 2))
        timeout $((DURATION + 20)) ip netns exec "$NS_CLIENT" wrk -t"$half_t" -c"$half_c" -d"${DURATION}s" "$@" \
            "http://$(url_host "$TARGET")/" >"$f.1" 2>&1 &
        timeout $((DURATION + 20)) ip netns exec "$NS_CLIENT" wrk -t"$half_t" -c"$half_c" -d"${DURATION}s" "$@" \
            "http://$(url_host "$TARGET2")/" >"$f.2" 2>&1 || true
        wait $! || true
        cat "$f.1" "$f.2" >"$f"
        paste -d' ' <(wrk_parse "$f.1") <(wrk_parse "$f.2") | awk '{ print $1 + $6, $2 + $7, $5 + $10 }'
    else
        timeout $((DURATION + 20)) ip netns exec "$NS_CLIENT" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" \
            "$@" "http://$(url_host "$TARGET")/" >"$f" 2>&1 || true
        wrk_parse "$f" | awk '{ print $1, $2, $5 }'
    fi
}

# perf_around TEST CMD...: runs CMD, under `perf record -g` of the director when PERF=1 and TEST=PERF_TEST.
perf_around() {
    local test=$1; shift
    if [[ $PERF == all && $test == "$PERF_TEST" ]]; then
        perf record -g -a -o "$OUT_DIR/perf-$CUR-$test-r$ROUND.data" -- sleep "$DURATION" >/dev/null 2>&1 &
        local perf_pid=$!
        "$@"
        wait "$perf_pid" 2>/dev/null || true
    elif [[ $PERF == 1 && $CUR == vipd* && $test == "$PERF_TEST" && -n $DPID ]]; then
        perf record -g -o "$OUT_DIR/perf-$CUR-$test-r$ROUND.data" -p "$DPID" -- sleep "$DURATION" >/dev/null 2>&1 &
        local perf_pid=$!
        "$@"
        wait "$perf_pid" 2>/dev/null || true
    else
        "$@"
    fi
}

plugin_calls() {   # "sum_seconds count" of vipd_plugin_call_duration_seconds (all plugins), 0 0 without
    { in_ns "$NS_DIR" curl -s --max-time 2 http://127.0.0.1:9469/metrics 2>/dev/null || true; } | awk '
        /^vipd_plugin_call_duration_seconds_sum/ { s += $NF }
        /^vipd_plugin_call_duration_seconds_count/ { n += $NF }
        END { printf "%.9f %d\n", s, n }'
}
call_us() {   # BEFORE AFTER ("sum count" pairs): mean µs per call in between, nan when none
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        n = y[2] - x[2]; if (n > 0) printf "%.2f", (y[1] - x[1]) / n * 1e6; else print "nan" }'
}

sync_sent() {   # "records datagrams bytes" sent by connection sync so far (0 0 0 without [sync])
    { in_ns "$NS_DIR" curl -s --max-time 2 http://127.0.0.1:9469/metrics 2>/dev/null || true; } | awk '
        /^vipd_sync_records_total\{direction="sent"\}/ { r = $NF }
        /^vipd_sync_datagrams_total\{direction="sent"\}/ { d = $NF }
        /^vipd_sync_bytes_total\{direction="sent"\}/ { b = $NF }
        END { printf "%d %d %d\n", r, d, b }'
}

per100k() { awk -v d="$1" -v t="$TCK" -v n="$2" 'BEGIN { printf "%.3f", d / t / n * 100000 }'; }

measure() {   # ROUND CONTENDER
    local r=$1 c=$2 t0 t1 s0 s1 m0 m1 rps err p50 p99 req
    local out=$TMP/out-$r-$c
    # new connections per second
    local calls0 calls1 sync0 sync1
    calls0=$(plugin_calls) sync0=$(sync_sent)
    t0=$(cpu_ticks "$DPID") s0=$(ctx_switches "$DPID") m0=$(machine_ticks)
    perf_around conn load "$out.conn" -H 'Connection: close' >"$out.conn.sum"
    t1=$(cpu_ticks "$DPID") s1=$(ctx_switches "$DPID") m1=$(machine_ticks)
    # (the last batch leaves within 20 ms)
    sleep 0.1
    calls1=$(plugin_calls) sync1=$(sync_sent)
    record "$r" "$c" call_us "$(call_us "$calls0" "$calls1")"
    # One new connection every 300 ms: a plugin call on an idle director (nothing else in between).
    # The director's CPU meanwhile: what keeping the plugin warm costs when connections trickle in.
    calls0=$(plugin_calls)
    local idle_t0 idle_w0
    idle_t0=$(cpu_ticks "$DPID") idle_w0=$(date +%s.%N)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.3
        in_ns "$NS_CLIENT" curl -s -o /dev/null --max-time 2 "http://$(url_host "$TARGET")/" || true
    done
    calls1=$(plugin_calls)
    record "$r" "$c" idle_call_us "$(call_us "$calls0" "$calls1")"
    if [[ -n $DPID ]]; then
        record "$r" "$c" idle_cpu "$(awk -v d=$(($(cpu_ticks "$DPID") - idle_t0)) -v t="$TCK" \
            -v a="$idle_w0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", 100 * d / t / (b - a) }')"
    fi
    read -r rps err req <"$out.conn.sum"
    record "$r" "$c" conn_s "$rps"; record "$r" "$c" conn_err "$err"
    if [[ $sync1 != "0 0 0" && $req -gt 0 ]]; then
        local k
        for k in 1 2 3; do
            record "$r" "$c" "sync_k$k" "$(awk -v a="$sync0" -v b="$sync1" -v n="$req" -v k=$k 'BEGIN {
                split(a, x, " "); split(b, y, " "); printf "%.1f", (y[k] - x[k]) / n * 1000 }')"
        done
    fi
    record "$r" "$c" idle_conn "$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " ");
        printf "%.1f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }')"
    if [[ -n $DPID && $req -gt 0 ]]; then
        record "$r" "$c" cpu_conn "$(per100k $((t1 - t0)) "$req")"
        record "$r" "$c" ctx_conn "$(awk -v d=$((s1 - s0)) -v n="$req" 'BEGIN { printf "%.3f", d / n }')"
    fi
    # keep-alive requests per second
    t0=$(cpu_ticks "$DPID")
    perf_around ka load "$out.ka" >"$out.ka.sum"
    t1=$(cpu_ticks "$DPID")
    read -r rps err req <"$out.ka.sum"
    record "$r" "$c" ka_s "$rps"; record "$r" "$c" ka_err "$err"
    [[ -n $DPID && $req -gt 0 ]] && record "$r" "$c" cpu_ka "$(per100k $((t1 - t0)) "$req")"
    # latency at moderate load: LAT_CONNS connections, each pausing between requests
    printf 'function delay() return %s end\n' "$LAT_DELAY_MS" >"$TMP/delay.lua"
    timeout $((DURATION + 20)) ip netns exec "$NS_CLIENT" wrk -t1 -c"$LAT_CONNS" -d"${DURATION}s" --latency \
        -s "$TMP/delay.lua" "http://$(url_host "$TARGET")/" >"$out.lat" 2>&1 || true
    read -r rps err p50 p99 req < <(wrk_parse "$out.lat")
    record "$r" "$c" lat_rps "$rps"; record "$r" "$c" p50_us "$p50"; record "$r" "$c" p99_us "$p99"
    record "$r" "$c" lat_err "$err"
    # bulk throughput
    if perf_around bulk timeout $((DURATION + 20)) ip netns exec "$NS_CLIENT" iperf3 -c "$TARGET" -p 5201 -t "$DURATION" -J \
        >"$out.bulk" 2>&1; then
        record "$r" "$c" bulk_gbps "$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9, 3))' "$out.bulk")"
    else
        record "$r" "$c" bulk_gbps "nan"
        log "  iperf3 failed: $(tail -c 300 "$out.bulk" | tr '\n' ' ')"
    fi
    if [[ -n $DPID ]]; then
        record "$r" "$c" rss_mib "$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$DPID/status" 2>/dev/null || echo nan)"
    fi
}

FLOOD_COOLDOWN=${FLOOD_COOLDOWN:-60}
LAST_FLOOD_END=-1000000
syn_recv_left() {   # half-open sockets on the servers (a flood's spoofed SYNs they answered)
    local n=0 ns
    for ns in "$NS_A" "$NS_B"; do
        n=$((n + $(in_ns "$ns" ss -Htn state syn-recv | wc -l)))
    done
    echo "$n"
}
servers_settled() { [[ $(syn_recv_left) -eq 0 ]]; }

measure_flood() {   # ROUND CONTENDER: legit conn/s before, during and after a spoofed SYN flood per rate
    local r=$1 c=$2 rate rps err req fpid
    local out=$TMP/out-$r-$c
    # A previous contender's flood leaves the servers up to 65535 half-open sockets each, whose SYN-ACKs
    # they retransmit for about a minute, and runs measured right after one were seen at a few percent of
    # the usual rate for tens of seconds whatever the contender (cause not found): every "before" starts
    # after the servers' half-open sockets are gone and FLOOD_COOLDOWN (60) s after the last flood.
    local left t0=$SECONDS
    left=$(syn_recv_left)
    wait_until 120 servers_settled || true
    while ((SECONDS < LAST_FLOOD_END + FLOOD_COOLDOWN)); do sleep 1; done
    ((SECONDS > t0)) && log "  waited $((SECONDS - t0)) s after the last flood ($left half-open sockets on the servers)"
    load "$out.before" -H 'Connection: close' >"$out.before.sum"
    read -r rps err req <"$out.before.sum"
    record "$r" "$c" flood_before "$rps"
    for rate in $FLOOD_RATES; do
        in_ns "$NS_CLIENT" "$SYNFLOOD" "$VIP" 80 "$rate" $((DURATION + 1)) >"$out.flood-$rate" 2>&1 &
        fpid=$!
        sleep 1
        load "$out.during-$rate" -H 'Connection: close' >"$out.during-$rate.sum"
        wait "$fpid" || true
        LAST_FLOOD_END=$SECONDS
        read -r rps err req <"$out.during-$rate.sum"
        record "$r" "$c" "flood_during_$rate" "$rps"
        log "  flood $rate/s: $(cat "$out.flood-$rate"); legit during: $rps conn/s"
        load "$out.after-$rate" -H 'Connection: close' >"$out.after-$rate.sum"
        read -r rps err req <"$out.after-$rate.sum"
        record "$r" "$c" "flood_after_$rate" "$rps"
    done
}

idle_fill() {   # puts IDLE half-open connections in vipd's table
    in_ns "$NS_CLIENT" python3 "$HERE/synflood.py" "$VIP" 9 1 198.51.100 250 >/dev/null   # resolves the sink's MAC
    sleep 1
    local before after
    before=$(in_ns "$NS_SINK" iptables -nvxL INPUT | awk '$3 == "DROP" { print $1 }')
    in_ns "$NS_CLIENT" python3 "$HERE/synflood.py" "$VIP" 9 "$IDLE" >/dev/null
    sleep 1
    after=$(in_ns "$NS_SINK" iptables -nvxL INPUT | awk '$3 == "DROP" { print $1 }')
    log "  idle connections: the sink received $((after - before)) of $IDLE SYNs through vipd"
    record "$ROUND" "$CUR" idle_held "$((after - before))"
}

CUR=""
run_contender() {   # ROUND CONTENDER
    ROUND=$1 CUR=$2 DPID="" TARGET="" TARGET2=""
    director_ns
    "start_$CUR"
    local rc=0
    wait_until 20 serving || rc=$?
    if [[ $rc -ne 0 ]]; then
        log "  $CUR did not start serving; its log:"
        tail -n 20 "$TMP/$CUR.log" >&2 2>/dev/null || true
        director_ns_del
        return 0
    fi
    [[ $CUR == vipd-200k ]] && idle_fill
    if [[ -n $FLOOD_RATES ]]; then
        measure_flood "$ROUND" "$CUR"
    else
        measure "$ROUND" "$CUR"
    fi
    if [[ $CUR == vipd-200k ]]; then   # still held after the measurements?
        local drops
        drops=$(in_ns "$NS_SINK" iptables -nvxL INPUT | awk '$3 == "DROP" { print $1 }')
        log "  (sink counter after: $drops)"
    fi
    director_ns_del
}

if [[ -n $FLOOD_RATES && ! -x $SYNFLOOD ]]; then
    log "building the flooder: cargo build --release -p vipd --example synflood"
    cargo build --release -p vipd --example synflood
    SYNFLOOD=target/release/examples/synflood
fi
mkdir -p "$OUT_DIR"
START=$SECONDS
log "contenders: ${CONTENDERS[*]}; $ROUNDS rounds of ${DURATION}s measurements"
for note in "${NOTES[@]}"; do log "note: $note"; done
for ((round = 1; round <= ROUNDS; round++)); do
    for c in "${CONTENDERS[@]}"; do
        log "round $round: $c"
        run_contender "$round" "$c"
        grep -P "^$round\t$c\t(conn_s|ka_s|bulk_gbps|p99_us|flood_\w+)\t" "$RESULTS" | cut -f3,4 | tr '\n\t' ' =' >&2
        echo >&2
    done
done
ELAPSED=$((SECONDS - START))
cp "$RESULTS" "$OUT_DIR/last.tsv"

# --- the report ---------------------------------------------------------------------------------------------
MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ { print $2 }') GiB, Linux $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
VERSIONS="vipd $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(haproxy -v 2>/dev/null | head -1 | awk '{ print "HAProxy " $3 }'), $(nginx -v 2>&1 | sed 's/.*nginx\//nginx /'), $(iptables -V), $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }'), iperf3 $(iperf3 -v | head -1 | awk '{ print $2 }')"
XS=""
for x in X1 X2 X3; do [[ -n ${!x:-} ]] && XS+="$x='${!x}' "; done
[[ -n $FLOOD_RATES ]] && XS+="FLOOD_RATES='$FLOOD_RATES' "
COMMAND="${XS}DURATION=$DURATION ROUNDS=$ROUNDS IDLE=$IDLE WRK_THREADS=$WRK_THREADS WRK_CONNS=$WRK_CONNS LAT_CONNS=$LAT_CONNS LAT_DELAY_MS=$LAT_DELAY_MS VIPD_KERNEL_DROP=$VIPD_KERNEL_DROP $HERE/compare.sh ${CONTENDERS[*]}"
REPORT=$OUT_DIR/last.md
python3 "$HERE/report.py" "$RESULTS" "${LABEL:-$(date -u +%F\ %H:%M) UTC}" "$MACHINE" "$VERSIONS" "$COMMAND" \
    "$ELAPSED" "${NOTES[@]}" >"$REPORT"
cat "$REPORT"
if [[ -n $DOC ]]; then
    MARKER=compare
    [[ -n $FLOOD_RATES ]] && MARKER=compare-flood
    python3 - "$DOC" "$REPORT" "$MARKER" <<'EOF'
import sys
doc, report = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
marker = sys.argv[3]
begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    text = f"{head}{begin}\n{report}\n{end}{tail}"
else:
    text += f"\n{begin}\n{report}\n{end}\n"
open(doc, "w").write(text)
EOF
    log "wrote the table into $DOC"
fi
