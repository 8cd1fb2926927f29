#!/usr/bin/env bash
# The patent's FIG. 3 on one machine: a client, vipd, and servers A, B, C in network namespaces, dual stack.
#
#   client 198.51.100.2 --eth0==vipd-out-- [director: vipd] --vipd-in 10.20.0.1-- bridge --+-- A 10.20.0.10
#          2001:db8:c::2                                    2001:db8:1::1               |   2001:db8:1::10
#   (192.0.2.0/24 and 2001:db8:f::/64 on-link: the client                               +-- B 10.20.0.11
#    ARPs and solicits for each VIP, vipd answers)                                       +-- C 10.20.0.12
#                                                                                            2001:db8:1::12
# Server A serves sites 1-3 on 8001-8003, B site 1 on 80, C sites 1-3 on 9001-9003; one nginx per site
# answering "site N on host X". vipd runs with examples/fig3.toml; the client curls every VIP, is refused at
# once on an unsupported port, and pings a VIP. Everything created is removed on exit, also on Ctrl-C.
#
# Usage: examples/demo.sh [--topology-only]
#   (root; VIPD=path/to/vipd skips the build; CONFIG=file replaces examples/fig3.toml)
set -euo pipefail

cd "$(dirname "$0")/.."
exec 3>&2                      # the terminal's stderr, for messages from inside redirected checks
CONFIG=${CONFIG:-examples/fig3.toml}
TOPOLOGY_ONLY=0
[[ "${1:-}" == "--topology-only" ]] && TOPOLOGY_ONLY=1

if [[ $EUID -ne 0 ]]; then
    echo "demo: needs root (network namespaces): sudo $0" >&2
    exit 1
fi
for tool in ip ethtool nginx curl ping; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is not installed" >&2; exit 1; }
done

P="vd$$"                       # namespace prefix: unique per run
NS_CLIENT="$P-client" NS_DIR="$P-director" NS_LAN="$P-lan"
NS_SERVERS=("$P-a" "$P-b" "$P-c")
SERVER_IPS=(10.20.0.10 10.20.0.11 10.20.0.12)
HOSTS=(A B C)
TMP=$(mktemp -d /tmp/vipd-demo.XXXXXX)
PIDS=()
CREATED=()

cleanup() {
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${CREATED[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, cleaning up"; exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
netns() {
    ip netns add "$1"
    CREATED+=("$1")
    ip -n "$1" link set lo up
    # IPv6 on, without duplicate address detection (addresses usable at once).
    in_ns "$1" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}
# veth NS_A DEV_A NS_B DEV_B: a cable with offloads off on both ends (vipd refuses offloads on).
veth() {
    ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
    in_ns "$1" ethtool -K "$2" gro off gso off tso off rx off tx off >/dev/null
    in_ns "$3" ethtool -K "$4" gro off gso off tso off rx off tx off >/dev/null
    ip -n "$1" link set "$2" up
    ip -n "$3" link set "$4" up
}
# wait_until SECONDS CMD...: polls CMD every 0.1 s.
wait_until() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# --- vipd -----------------------------------------------------------------------------------------------
if [[ $TOPOLOGY_ONLY -eq 0 ]]; then
    [[ -f $CONFIG ]] || { echo "demo: $CONFIG is missing" >&2; exit 1; }
    if [[ -z "${VIPD:-}" ]]; then
        echo "== building vipd (cargo build --release)"
        cargo build --release -p vipd
        VIPD=target/release/vipd
    fi
    if ! "$VIPD" run --help 2>&1 | grep -q -- --config; then
        echo "demo: '$VIPD run' is not available in this build (the live director is not there yet)." >&2
        echo "      Try 'examples/demo.sh --topology-only' to see the namespaces and sites alone." >&2
        exit 1
    fi
fi

# --- FIG. 3 -----------------------------------------------------------------------------------------------
echo "== creating namespaces $P-*"
netns "$NS_CLIENT"; netns "$NS_DIR"; netns "$NS_LAN"
for ns in "${NS_SERVERS[@]}"; do netns "$ns"; done

veth "$NS_CLIENT" eth0 "$NS_DIR" vipd-out
ip -n "$NS_CLIENT" addr add 198.51.100.2/24 dev eth0
ip -n "$NS_CLIENT" route add 192.0.2.0/24 dev eth0          # VIPs on-link: proxy ARP by vipd
ip -n "$NS_CLIENT" addr add 2001:db8:c::2/64 dev eth0 nodad
ip -n "$NS_CLIENT" route add 2001:db8:f::/64 dev eth0        # IPv6 VIPs on-link: vipd answers solicitations

ip -n "$NS_LAN" link add br0 type bridge
ip -n "$NS_LAN" link set br0 up
veth "$NS_DIR" vipd-in "$NS_LAN" port-d
ip -n "$NS_LAN" link set port-d master br0
ip -n "$NS_DIR" addr add 10.20.0.1/24 dev vipd-in               # the servers' gateway
ip -n "$NS_DIR" addr add 2001:db8:1::1/64 dev vipd-in nodad
in_ns "$NS_DIR" sysctl -qw net.ipv4.ip_forward=0 net.ipv4.conf.all.arp_ignore=1 net.ipv6.conf.all.forwarding=0

for i in 0 1 2; do
    ns=${NS_SERVERS[$i]} port=port-${HOSTS[$i],,}
    veth "$ns" eth0 "$NS_LAN" "$port"
    ip -n "$NS_LAN" link set "$port" master br0
    ip -n "$ns" addr add "${SERVER_IPS[$i]}/24" dev eth0
    ip -n "$ns" route add default via 10.20.0.1
    ip -n "$ns" addr add "2001:db8:1::1$i/64" dev eth0 nodad
    ip -n "$ns" route add default via 2001:db8:1::1
done

# --- one nginx per site --------------------------------------------------------------------------------
# site HOST_INDEX SITE PORT
site() {
    local i=$1 n=$2 port=$3 dir="$TMP/nginx-${HOSTS[$1]}-$3"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
    server { listen $port; listen [::]:$port; location / { default_type text/plain; return 200 "site $n on host ${HOSTS[$i]}\n"; } }
}
EOF
    in_ns "${NS_SERVERS[$i]}" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
    PIDS+=($!)
    if ! wait_until 10 in_ns "${NS_SERVERS[$i]}" curl -sf "http://${SERVER_IPS[$i]}:$port/"; then
        echo "demo: nginx for site $n on host ${HOSTS[$i]} did not start:" >&2
        cat "$dir/out.log" "$dir/error.log" >&2 2>/dev/null || true
        exit 1
    fi
}
echo "== starting the sites"
site 0 1 8001; site 0 2 8002; site 0 3 8003
site 1 1 80
site 2 1 9001; site 2 2 9002; site 2 3 9003
for i in 0 1 2; do
    for port in 80 8001 8002 8003 9001 9002 9003; do
        body=$(in_ns "$NS_DIR" curl -s --max-time 1 "http://${SERVER_IPS[$i]}:$port/" 2>/dev/null) || continue
        printf '   host %s %-16s -> %s\n' "${HOSTS[$i]}" "${SERVER_IPS[$i]}:$port" "$body"
    done
done

if [[ $TOPOLOGY_ONLY -eq 1 ]]; then
    echo "== topology only: namespaces and sites are up; press Enter to remove them"
    read -r || true
    exit 0
fi

# --- vipd in the director namespace ----------------------------------------------------------------------
# The virtual machines and their TCP ports, from the config: "ADDRESS PORT" lines.
mapfile -t VPORTS < <(awk '
    function flush() { if (port != "" && proto == "tcp") print addr, port; port = "" }
    /^\[\[virtual\]\]/      { flush(); sect = "v"; next }
    /^[ \t]*\[\[virtual\.port\]\]/ { flush(); sect = "p"; proto = "tcp"; next }
    /^[ \t]*\[/             { flush(); sect = ""; next }
    sect == "v" && $1 == "address"  { gsub(/"/, "", $3); addr = $3 }
    sect == "p" && $1 == "port"     { port = $3 }
    sect == "p" && $1 == "protocol" { gsub(/"/, "", $3); proto = $3 }
    END { flush() }
' "$CONFIG")
if [[ ${#VPORTS[@]} -eq 0 ]]; then
    echo "demo: no [[virtual]] address with [[virtual.port]] found in $CONFIG" >&2
    exit 1
fi

echo "== starting vipd in $NS_DIR: $VIPD run --config $CONFIG"
in_ns "$NS_DIR" "$VIPD" run --config "$CONFIG" >"$TMP/vipd.log" 2>&1 &
VIPD_PID=$!
PIDS+=("$VIPD_PID")
read -r vip0 port0 <<<"${VPORTS[0]}"
# serving: true once the first VIP answers; exits the demo if vipd died.
serving() {
    if ! kill -0 "$VIPD_PID" 2>/dev/null; then
        echo "demo: vipd exited; its log:" >&3
        cat "$TMP/vipd.log" >&3
        exit 1
    fi
    in_ns "$NS_CLIENT" curl -sf --max-time 1 "http://$vip0:$port0/"
}
if ! wait_until 15 serving; then
    echo "demo: vipd did not start serving $vip0:$port0; its log:" >&2
    cat "$TMP/vipd.log" >&2
    exit 1
fi

# url VIP PORT: an IPv6 address goes in brackets.
url() { if [[ $1 == *:* ]]; then echo "http://[$1]:$2/"; else echo "http://$1:$2/"; fi; }
echo "== from the client (198.51.100.2, 2001:db8:c::2): every VIP, 4 times"
for vp in "${VPORTS[@]}"; do
    read -r vip port <<<"$vp"
    for _ in 1 2 3 4; do
        body=$(in_ns "$NS_CLIENT" curl -sS --max-time 2 "$(url "$vip" "$port")" 2>&1) || true
        printf '   %-22s -> %s\n' "$(url "$vip" "$port")" "$body"
    done
done

echo "== an unsupported port: $vip0:81"
start=$(date +%s%N)
out=$(in_ns "$NS_CLIENT" curl -sS --max-time 5 "http://$vip0:81/" 2>&1) && rc=0 || rc=$?
end=$(date +%s%N)
printf '   curl exit %d after %d ms: %s\n' "$rc" $(((end - start) / 1000000)) "$out"

echo "== ping $vip0"
in_ns "$NS_CLIENT" ping -c 3 -i 0.2 -W 2 "$vip0" | sed 's/^/   /' || true
for vp in "${VPORTS[@]}"; do
    read -r vip _ <<<"$vp"
    if [[ $vip == *:* ]]; then
        echo "== ping -6 $vip"
        in_ns "$NS_CLIENT" ping -6 -c 3 -i 0.2 -W 2 "$vip" | sed 's/^/   /' || true
        break
    fi
done

echo "== stopping vipd"
kill -TERM "$VIPD_PID" 2>/dev/null || true
wait "$VIPD_PID" 2>/dev/null || true
echo "   vipd log (tail):"
tail -n 5 "$TMP/vipd.log" | sed 's/^/   /'
echo "== done; removing namespaces"
