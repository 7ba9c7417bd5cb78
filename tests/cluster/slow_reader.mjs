// slow_reader.mjs -- a ZMTP 3 DEALER that asks for long streams and then
// stops reading (t_slow_reader.sh).
//
//   node slow_reader.mjs ENDPOINT N_REQUESTS MAX_TOKENS HOLD_S [read]
//
// ENDPOINT is tcp://HOST:PORT or ipc://PATH. Reads the server's greeting and
// READY, sends N_REQUESTS streaming Generate messages ("The river",
// MAX_TOKENS tokens, ignore_eos), then stops reading the socket
// (socket.pause(): the socket buffers fill and the router's sends meet its
// high-water mark) and holds the connection open for HOLD_S seconds; then
// it closes and exits 0. With "read" it reads (and drops) everything
// instead: the control, a client that keeps up. Prints "sent N requests"
// once the requests are written; exits 1 if the router hangs up during the
// handshake. It never answers ZMTP PINGs, so to the router's heartbeat it
// looks dead after router.liveness x router.heartbeat_ms: the test sets
// that longer than its run.
import net from "node:net";

const [endpoint, nArg, maxArg, holdArg, mode] = process.argv.slice(2);
const tcp = /^tcp:\/\/([^:]+):(\d+)$/.exec(endpoint || "");
const ipc = /^ipc:\/\/(.+)$/.exec(endpoint || "");
const n = Number(nArg), maxTokens = Number(maxArg), holdS = Number(holdArg);
if (!(tcp || ipc) || !Number.isInteger(n) || n < 1 || !Number.isInteger(maxTokens) || maxTokens < 1 ||
    !(holdS >= 0) || (mode !== undefined && mode !== "read")) {
    console.error("usage: slow_reader.mjs tcp://HOST:PORT|ipc://PATH N_REQUESTS MAX_TOKENS HOLD_S [read]");
    process.exit(2);
}

function varint(v) {
    const out = [];
    for (;;) {
        const b = v & 0x7f;
        v = Math.floor(v / 128);
        if (v) {
            out.push(b | 0x80);
        } else {
            out.push(b);
            return Buffer.from(out);
        }
    }
}

// One protobuf field: wire 0 (varint, payload a number) or 2 (bytes).
function field(num, wire, payload) {
    const key = varint(num * 8 + wire);
    if (wire === 0)
        return Buffer.concat([key, varint(payload)]);
    return Buffer.concat([key, varint(payload.length), payload]);
}

// Msg { generate = 1: Generate { request_id = 1, prompt = 2, max_tokens = 5,
// ignore_eos = 8, stream = 9 } }
function generate(reqId, maxTok) {
    const g = Buffer.concat([field(1, 0, reqId), field(2, 2, Buffer.from("The river")),
                             field(5, 0, maxTok), field(8, 0, 1), field(9, 0, 1)]);
    return field(1, 2, g);
}

function frame(payload) {
    if (payload.length < 256)
        return Buffer.concat([Buffer.from([0, payload.length]), payload]);
    const h = Buffer.alloc(9);
    h[0] = 2; // long frame, no more
    h.writeBigUInt64BE(BigInt(payload.length), 1);
    return Buffer.concat([h, payload]);
}

function greeting() {
    const g = Buffer.alloc(64);
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3; // version 3.0
    g.write("NULL", 12, "ascii");
    return g;
}

function property(name, value) {
    const k = Buffer.from(name, "ascii");
    const v = Buffer.from(value, "ascii");
    const b = Buffer.alloc(1 + k.length + 4 + v.length);
    b[0] = k.length;
    k.copy(b, 1);
    b.writeUInt32BE(v.length, 1 + k.length);
    v.copy(b, 5 + k.length);
    return b;
}

function ready() {
    const body = Buffer.concat([Buffer.from([5]), Buffer.from("READY", "ascii"),
                                property("Socket-Type", "DEALER"), property("Identity", "")]);
    return Buffer.concat([Buffer.from([0x04, body.length]), body]);
}

let got = 0;
let sent = false;
const sock = net.connect(tcp ? { host: tcp[1], port: Number(tcp[2]) } : { path: ipc[1] });
sock.on("error", (e) => {
    console.log(`socket error: ${e.message}`);
    if (!sent)
        process.exit(1);
});
sock.on("close", () => {
    if (!sent) {
        console.log("closed during handshake");
        process.exit(1);
    }
});
sock.on("connect", () => sock.write(Buffer.concat([greeting(), ready()])));
sock.on("data", (d) => {
    got += d.length;
    if (got < 64 + 2 || sent) // the server's greeting and its READY header
        return;
    sent = true;
    if (mode !== "read")
        sock.pause(); // from here on nothing is read
    setTimeout(() => {
        const parts = [];
        for (let i = 0; i < n; i++)
            parts.push(frame(generate(i + 1, maxTokens)));
        sock.write(Buffer.concat(parts), () => {
            console.log(`sent ${n} requests; ${mode === "read" ? "reading" : "not reading"}`);
            setTimeout(() => {
                sock.destroy();
                process.exit(0);
            }, holdS * 1000);
        });
    }, 200);
});
