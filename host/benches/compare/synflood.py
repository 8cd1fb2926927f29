#!/usr/bin/env python3
"""Idle connections for the comparison: COUNT TCP SYNs, each from a distinct (source address, port), to DST:PORT.

Run inside the client namespace. The source addresses (SRC_NET.BASE .. SRC_NET.BASE+ADDRS-1) are not the
client's own, so the client's kernel drops the director's replies instead of answering them with RST: every
SYN leaves one half-open connection object in the director's table (the real server behind DST:PORT drops
the SYN, so nothing ever closes it). Paced in bursts so the capture ring never overflows.

Usage: synflood.py DST PORT COUNT [SRC_PREFIX=198.51.100] [FIRST_HOST=100] [BURST=2000] [PAUSE_MS=20]
"""
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def main() -> None:
    dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prefix = sys.argv[4] if len(sys.argv) > 4 else "198.51.100"
    first = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    burst = int(sys.argv[6]) if len(sys.argv) > 6 else 2000
    pause = (int(sys.argv[7]) if len(sys.argv) > 7 else 20) / 1000
    ports_per_addr = 60000
    daddr = socket.inet_aton(dst)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = 0
    for i in range(count):
        host, sport = first + i // ports_per_addr, 1024 + i % ports_per_addr
        saddr = socket.inet_aton(f"{prefix}.{host}")
        seq = (i * 2654435761) & 0xFFFFFFFF
        tcp = struct.pack("!HHIIBBHHH", sport, port, seq, 0, 5 << 4, 0x02, 65535, 0, 0)
        pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, socket.IPPROTO_TCP, 0, saddr, daddr)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        while True:
            try:
                s.sendto(ip + tcp, (dst, 0))
                break
            except (BlockingIOError, OSError):
                time.sleep(0.001)
        sent += 1
        if sent % burst == 0:
            time.sleep(pause)
    print(sent)


if __name__ == "__main__":
    main()
