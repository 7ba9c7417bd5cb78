#!/usr/bin/env python3
"""slow_reader.py -- a ZMTP 3 DEALER that asks for long streams and then
stops reading (t_slow_reader.sh).

    slow_reader.py tcp://127.0.0.1:PORT N_REQUESTS MAX_TOKENS HOLD_S

A tiny receive buffer (SO_RCVBUF) keeps the kernel from absorbing the
streams, so the router's sends hit its high-water mark. Reads only the
handshake, then holds the connection open without reading for HOLD_S
seconds and exits 0.
"""
import socket
import struct
import sys
import time


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def generate(req_id, max_tokens):
    g = (field(1, 0, req_id) + field(2, 2, b"The river") + field(5, 0, max_tokens) +
         field(8, 0, 1) + field(9, 0, 1))
    return field(1, 2, g)  # Msg.generate


def frame(payload, more=False):
    flags = 1 if more else 0
    if len(payload) < 256:
        return bytes([flags, len(payload)]) + payload
    return bytes([flags | 2]) + struct.pack(">Q", len(payload)) + payload


def main():
    ep, n, max_tokens, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    host, port = ep[len("tcp://"):].rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect((host, int(port)))
    greet = bytearray(64)
    greet[0], greet[9], greet[10] = 0xFF, 0x7F, 3
    greet[12:16] = b"NULL"
    s.sendall(bytes(greet))
    prop = lambda k, v: bytes([len(k)]) + k + struct.pack(">I", len(v)) + v
    body = b"\x05READY" + prop(b"Socket-Type", b"DEALER") + prop(b"Identity", b"")
    s.sendall(bytes([0x04, len(body)]) + body)
    got = b""
    while len(got) < 64 + 2:  # the server's greeting and its READY header
        chunk = s.recv(4096)
        if not chunk:
            print("closed during handshake")
            return 1
        got += chunk
    time.sleep(0.2)
    for i in range(n):
        s.sendall(frame(generate(i + 1, max_tokens)))
    print("sent %d requests; not reading" % n, flush=True)
    time.sleep(hold)
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
