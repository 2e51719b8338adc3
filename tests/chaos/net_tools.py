"""Tiny network probes run inside test namespaces (``python -m tests.chaos.net_tools ...``):

echo PORT                 serve TCP echo on 0.0.0.0:PORT until killed
tcp ADDR PORT TIMEOUT     connect, send, read the echo; print "ok <rtt_ms>" or "fail <why>"
udp-recv PORT SECONDS     count UDP datagrams received for SECONDS; print the count
udp-send ADDR PORT N      send N datagrams
"""

from __future__ import annotations

import socket
import socketserver
import sys
import time


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def tcp_probe(addr: str, port: int, timeout: float) -> str:
    started = time.monotonic()
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"ping")
            if s.recv(4) != b"ping":
                return "fail bad echo"
    except OSError as exc:
        return f"fail {type(exc).__name__}"
    return f"ok {(time.monotonic() - started) * 1000:.1f}"


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "echo":
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        with socketserver.ThreadingTCPServer(("0.0.0.0", int(args[0])), _Echo) as server:
            print("listening", flush=True)
            server.serve_forever()
    elif command == "tcp":
        print(tcp_probe(args[0], int(args[1]), float(args[2])), flush=True)
    elif command == "udp-recv":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", int(args[0])))
            print("listening", flush=True)
            deadline = time.monotonic() + float(args[1])
            count = 0
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    s.recv(2048)
                    count += 1
                except TimeoutError:
                    break
            print(count, flush=True)
    elif command == "udp-send":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(int(args[2])):
                s.sendto(str(i).encode(), (args[0], int(args[1])))
                time.sleep(0.002)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
