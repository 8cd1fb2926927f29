#!/usr/bin/env python3
"""Markdown report of a compare.sh run: medians over rounds per contender, and vipd/peer ratios.

Usage: report.py RESULTS.tsv LABEL MACHINE VERSIONS COMMAND ELAPSED_S [NOTE...]
RESULTS.tsv lines: round, contender, metric, value (tab-separated).
"""
import math
import os
import statistics
import sys
from collections import defaultdict

ORDER = ["none", "dnat", "haproxy", "nginx", "vipd", "vipd-xdp", "vipd-xdp-generic", "vipd-sync", "none6", "dnat6", "vipd6", "vipd-200k", "vipd-wasm", "vipd-wasm-base", "vipd-shadow", "vipd-maglev", "vipd-rt", "vipd-kstack", "vipd-base", "vipd-x1", "vipd-x2", "vipd-x3"]
NAMES = {
    "none": "no director (ceiling)",
    "dnat": "iptables DNAT + conntrack",
    "haproxy": "HAProxy mode tcp, 1 thread",
    "nginx": "nginx stream, 1 worker",
    "vipd": "vipd, built-in round-robin",
    "vipd-xdp": "vipd, offload = \"xdp\", native (peers GRO on)",
    "vipd-xdp-generic": "vipd, offload = \"xdp\", generic",
    "none6": "IPv6: no director (ceiling)",
    "dnat6": "IPv6: ip6tables DNAT + conntrack",
    "vipd6": "IPv6: vipd, built-in round-robin",
    "vipd-200k": "vipd, 200k idle connections held",
    "vipd-sync": "vipd, active director of a pair ([sync])",
    "vipd-wasm": "vipd, round-robin Wasm plugin",
    "vipd-shadow": "vipd, round-robin Wasm plugin + the same as shadow policy",
    "vipd-wasm-base": "vipd-wasm, baseline binary (VIPD_BASE)",
    "vipd-maglev": "vipd, maglev plugin",
    "vipd-rt": "vipd, SCHED_FIFO (chrt -f 50)",
    "vipd-kstack": "vipd, kernel stack also sees its frames",
    "vipd-base": "vipd, baseline binary (VIPD_BASE)",
}
for _x in ("X1", "X2", "X3"):
    if os.environ.get(_x):
        NAMES[f"vipd-{_x.lower()}"] = "vipd, " + os.environ[_x].replace(";", ",")
# metric, header, format, higher is better
COLUMNS = [
    ("conn_s", "new conn/s", "{:,.0f}", True),
    ("ka_s", "keep-alive req/s", "{:,.0f}", True),
    ("bulk_gbps", "bulk Gbit/s", "{:.2f}", True),
    ("p50_us", "p50 µs", "{:.0f}", False),
    ("p99_us", "p99 µs", "{:.0f}", False),
    ("cpu_conn", "CPU s / 100k conn", "{:.2f}", False),
    ("cpu_ka", "CPU s / 100k req (keep-alive)", "{:.2f}", False),
    ("ctx_conn", "context switches / conn", "{:.2f}", False),
    ("idle_conn", "CPU idle % (new conn run)", "{:.0f}", False),
    ("call_us", "plugin µs/call (new conn run)", "{:.2f}", False),
    ("idle_call_us", "plugin µs/call (idle)", "{:.2f}", False),
    ("idle_cpu", "director CPU % (idle)", "{:.1f}", False),
    ("errors", "errors", "{:.0f}", False),
]


def main() -> None:
    path, label, machine, versions, command, elapsed, *notes = sys.argv[1:]
    values = defaultdict(list)
    for line in open(path):
        rnd, who, metric, value = line.rstrip("\n").split("\t")
        try:
            v = float(value)
        except ValueError:
            continue
        if math.isnan(v):
            continue
        values[(who, metric)].append(v)
        if metric in ("conn_err", "ka_err", "lat_err"):
            values[(who, "errors")].append(v)
    rounds = len({l.split("\t")[0] for l in open(path)})
    flood = sorted({int(m.rsplit("_", 1)[1]) for (_, m) in values if m.startswith("flood_during_")})
    if flood:
        # The flood test replaces the usual measurements: legit conn/s before, during, after each rate.
        COLUMNS[:] = [("flood_before", "legit conn/s, no flood", "{:,.0f}", True)]
        for rate in flood:
            COLUMNS.append((f"flood_during_{rate}", f"during {rate:,} SYN/s", "{:,.0f}", True))
            COLUMNS.append((f"flood_share_{rate}", "kept", "{:.0%}", True))
            COLUMNS.append((f"flood_after_{rate}", "right after", "{:,.0f}", True))
        for (who, metric), v in list(values.items()):
            if metric.startswith("flood_during_") and values.get((who, "flood_before")):
                rate = metric.rsplit("_", 1)[1]
                before = statistics.median(values[(who, "flood_before")])
                values[(who, f"flood_share_{rate}")] = [statistics.median(v) / before] if before else []
    who_all = [w for w in ORDER if any(k[0] == w for k in values)]

    def med(who, metric):
        v = values.get((who, metric))
        if not v:
            return None
        if metric == "errors":
            return sum(v)
        return statistics.median(v)

    out = [f"### Run: {label}", ""]
    out.append(f"Machine: {machine}.  ")
    out.append(f"Versions: {versions}.  ")
    out.append(f"Command: `{command}` ({rounds} rounds, alternating; {elapsed} s in all). Medians over rounds; "
               "errors are summed over all rounds. CPU of none/dnat is softirq time, not attributable to a process: n/a.")
    out.append("")
    out.append("| contender | " + " | ".join(c[1] for c in COLUMNS) + " |")
    out.append("|---|" + "---:|" * len(COLUMNS))
    for who in who_all:
        cells = []
        for metric, _, fmt, _ in COLUMNS:
            m = med(who, metric)
            cells.append("n/a" if m is None else fmt.format(m))
        out.append(f"| {NAMES.get(who, who)} | " + " | ".join(cells) + " |")
    out.append("")
    if any(w.startswith("vipd") for w in who_all) and not flood:
        out.append("Ratios (vipd figure / peer figure; for latency and CPU lower is better, "
                   "and `+N µs` is p99 added over the no-director path):")
        out.append("")
        cols = COLUMNS[:7]
        out.append("| ratio | " + " | ".join(c[1] for c in cols) + " | p99 added |")
        out.append("|---|" + "---:|" * (len(cols) + 1))
        pairs = [("vipd", p) for p in ("none", "dnat", "haproxy", "nginx")]
        pairs += [(x, p) for x in ("vipd-xdp", "vipd-xdp-generic") for p in ("none", "dnat", "vipd")]
        pairs += [("vipd6", "none6"), ("vipd6", "dnat6"), ("vipd6", "vipd")]
        pairs += [("vipd-sync", "vipd"), ("vipd-200k", "vipd"), ("vipd-wasm", "vipd"), ("vipd-maglev", "vipd"), ("vipd", "vipd-base"), ("vipd", "vipd-kstack"), ("vipd-rt", "vipd")]
        for a, b in pairs:
            if a not in who_all or b not in who_all:
                continue
            cells = []
            for metric, _, _, _ in cols:
                x, y = med(a, metric), med(b, metric)
                cells.append("n/a" if x is None or y in (None, 0) else f"{x / y:.2f}")
            p_a, p_none = med(a, "p99_us"), med("none6" if a.endswith("6") else "none", "p99_us")
            added = "n/a" if p_a is None or p_none is None else f"{p_a - p_none:+.0f} µs"
            out.append(f"| {a} / {b} | " + " | ".join(cells) + f" | {added} |")
        out.append("")
    extra = []
    for who in who_all:
        held = values.get((who, "idle_held"))
        if held:
            extra.append(f"{who}: idle connections put in the table per round: {', '.join(str(int(h)) for h in held)}")
        sync = [values.get((who, f"sync_k{k}")) for k in (1, 2, 3)]
        if all(sync):
            r, d, b = (statistics.median(v) for v in sync)
            extra.append(f"{who}: sync per 1,000 new connections (the new conn/s run): {r:,.0f} records, "
                         f"{d:,.0f} datagrams, {b / 1000:,.1f} kB sent (UDP payload, one peer)")
        rss = values.get((who, "rss_mib"))
        if rss:
            extra.append(f"{who}: director RSS at the end of the round: {statistics.median(rss):.1f} MiB")
    for note in notes:
        extra.append(f"note: {note}")
    out += [f"- {e}" for e in extra]
    print("\n".join(out))


if __name__ == "__main__":
    main()
