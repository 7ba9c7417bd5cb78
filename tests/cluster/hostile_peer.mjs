// hostile_peer.mjs -- speaks broken ZMTP 3 at one endpoint (t_hostile_peer.sh).
//
//   node hostile_peer.mjs tcp://127.0.0.1:PORT CASE
//
// CASE: huge (a frame announcing 4 GiB after a valid NULL handshake),
// truncated (the first frame of a multipart message, then hang up),
// tiny (a million empty frames of one message, then its last frame;
// TINY_FRAMES overrides the count),
// raw (an HTTP request instead of a greeting), stall (half a greeting,
// then nothing). Prints one JSON line {case, closedByPeer, ms} and exits 0;
// closedByPeer says whether the server hung up on us within 8 s.
import net from "node:net";

const [endpoint, kase] = process.argv.slice(2);
const m = /^tcp:\/\/([^:]+):(\d+)$/.exec(endpoint || "");
if (!m) {
    console.error("usage: hostile_peer.mjs tcp://HOST:PORT CASE");
    process.exit(2);
}

function greeting() {
    const g = Buffer.alloc(64);
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3; // version 3.0
    g[11] = 0;
    g.write("NULL", 12, "ascii");
    return g;
}

function property(name, value) {
    const n = Buffer.from(name, "ascii");
    const v = Buffer.from(value, "ascii");
    const b = Buffer.alloc(1 + n.length + 4 + v.length);
    b[0] = n.length;
    n.copy(b, 1);
    b.writeUInt32BE(v.length, 1 + n.length);
    v.copy(b, 5 + n.length);
    return b;
}

function ready() {
    const body = Buffer.concat([Buffer.from([5]), Buffer.from("READY", "ascii"),
                                property("Socket-Type", "DEALER"), property("Identity", "")]);
    return Buffer.concat([Buffer.from([0x04, body.length]), body]);
}

function frame(payload, more) {
    if (payload.length < 256)
        return Buffer.concat([Buffer.from([more ? 1 : 0, payload.length]), payload]);
    const h = Buffer.alloc(9);
    h[0] = (more ? 1 : 0) | 2;
    h.writeBigUInt64BE(BigInt(payload.length), 1);
    return Buffer.concat([h, payload]);
}

const t0 = Date.now();
let done = false;
function finish(closedByPeer) {
    if (done) return;
    done = true;
    console.log(JSON.stringify({ case: kase, closedByPeer, ms: Date.now() - t0 }));
    sock.destroy();
    process.exit(0);
}

const sock = net.connect({ host: m[1], port: Number(m[2]) });
sock.on("error", () => finish(true));
sock.on("close", () => finish(true));
sock.on("data", () => {});
sock.on("connect", () => {
    switch (kase) {
    case "huge": {
        const h = Buffer.alloc(9);
        h[0] = 2; // long frame, no more
        h.writeBigUInt64BE(4n << 30n, 1);
        sock.write(Buffer.concat([greeting(), ready(), h, Buffer.alloc(4096, 0x41)]));
        break;
    }
    case "truncated":
        sock.write(Buffer.concat([greeting(), ready(), frame(Buffer.from("first"), true)]),
                   () => setTimeout(() => finish(false), 200));
        return;
    case "tiny": {
        const parts = [greeting(), ready()];
        const empty = Buffer.from([1, 0]);
        const nTiny = Number(process.env.TINY_FRAMES || 1000000);
        for (let i = 0; i < nTiny; i++) parts.push(empty);
        parts.push(frame(Buffer.from("last"), false));
        sock.write(Buffer.concat(parts), () => setTimeout(() => finish(false), 500));
        return;
    }
    case "raw":
        sock.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + "\x00\xff".repeat(512));
        break;
    case "stall":
        sock.write(greeting().subarray(0, 10));
        break;
    default:
        console.error("unknown case " + kase);
        process.exit(2);
    }
    setTimeout(() => finish(false), 8000);
});
