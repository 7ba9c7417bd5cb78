// bench_http_mock.mjs PORTFILE: a raw-socket OpenAI-like server for
// t_bench_http.sh that misbehaves on request, to test pd-bench --target's
// HTTP client. The completion prompt (text) picks the behaviour:
//   drip      a good chunked SSE stream (3 text events, usage 5 tokens) written 1 byte at a time
//   nousage   Content-Length body, 4 text events, no usage: output_len counts events
//   err500    500 with an OpenAI error body
//   nodone    a stream that ends (connection closed) without data: [DONE]
//   bighdr    a 40 KB response header
//   longline  an SSE line over 1 MiB
//   plainjson a 200 application/json completion (the server ignored "stream")
import net from "node:net";
import { writeFileSync } from "node:fs";

const ev = (o) => `data: ${JSON.stringify(o)}\n\n`;
const text = (t) => ev({ choices: [{ index: 0, text: t, finish_reason: null }], usage: null });
const chunked = (s) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function respond(sock, method, path, body) {
    if (method === "GET" && path === "/v1/models") {
        const b = JSON.stringify({ object: "list", data: [{ id: "mock", object: "model", max_model_len: 4096 }] });
        sock.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n${b}`);
        return;
    }
    const mode = JSON.parse(body).prompt;
    const sseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n";
    if (mode === "drip") {
        let s = sseHead + "Transfer-Encoding: chunked\r\n\r\n";
        for (const t of ["a", "b", "c"]) s += chunked(text(t));
        s += chunked(ev({ choices: [{ index: 0, text: "", finish_reason: "length" }], usage: null }));
        s += chunked(ev({ choices: [], usage: { prompt_tokens: 2, completion_tokens: 5, total_tokens: 7 } }));
        s += chunked("data: [DONE]\n\n") + "0\r\n\r\n";
        for (const ch of s) {
            sock.write(ch);
            await sleep(1);
        }
        sock.end();
    } else if (mode === "nousage") {
        const b = ["w", "x", "y", "z"].map(text).join("") + "data: [DONE]\n\n";
        sock.end(sseHead + `Content-Length: ${Buffer.byteLength(b)}\r\n\r\n` + b);
    } else if (mode === "err500") {
        const b = JSON.stringify({ error: { message: "mock exploded", type: "server_error", param: null, code: null } });
        sock.end(`HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n${b}`);
    } else if (mode === "nodone") {
        sock.end(sseHead + "\r\n" + text("a") + text("b"));
    } else if (mode === "bighdr") {
        sock.end(sseHead + "X-Big: " + "h".repeat(40000) + "\r\n\r\n" + text("a") + "data: [DONE]\n\n");
    } else if (mode === "longline") {
        sock.write(sseHead + "\r\ndata: ");
        sock.end("l".repeat(1100000) + "\n\n");
    } else if (mode === "plainjson") {
        const b = JSON.stringify({ choices: [{ index: 0, text: "abc", finish_reason: "length" }] });
        sock.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n${b}`);
    } else {
        sock.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    }
}

const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on("error", () => {});
    sock.on("data", (d) => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        const m = /content-length:\s*(\d+)/i.exec(head);
        const len = m ? Number(m[1]) : 0;
        if (buf.length < end + 4 + len) return;
        const [method, path] = head.split(" ");
        sock.removeAllListeners("data");
        respond(sock, method, path, buf.subarray(end + 4, end + 4 + len).toString());
    });
});
server.listen(0, "127.0.0.1", () => writeFileSync(process.argv[2], String(server.address().port)));
