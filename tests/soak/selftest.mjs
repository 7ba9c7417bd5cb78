// selftest.mjs -- the soak checker can fail: a clean synthetic history
// passes, and each doctored copy (a gap, a duplicate, a wrong token, a
// missing or second terminal state, a late one, a token after the end, an
// error no fault explains, leaked KV blocks, descriptors, RSS, a ghost
// worker, a run with no request or every submit refused, a fault that hit
// no work in flight, a token past the reference without an eos finish...)
// is reported with the right promise and request id, and makes check.mjs
// exit non-zero. TAP output, with its plan.
//
//   node tests/soak/selftest.mjs
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = mkdtempSync(join(tmpdir(), "soakcheck."));
const refs = join(root, "refs");
mkdirSync(refs);
writeFileSync(join(refs, "ref_0.txt"), "5 6 7 8\n");
writeFileSync(join(refs, "ref_1.txt"), "9 10 11\n");

const T = 1000;
function clean() {
  const spec = (k, n) => ({ ev: "spec", k, prompt: `p${k}`, max_tokens: n, temp: 0, top_p: 1, seed: 0, ignore_eos: true });
  const sub = (id, spec, t) => ({ ev: "submit", t, id, spec, max_tokens: spec ? 3 : 4, temp: 0, top_p: 1, seed: 0, ignore_eos: true, deadline_ms: 10000 });
  const chunk = (id, i, toks, t) => ({ ev: "chunk", t, id, i, toks, text: "x" });
  const end = (id, t, finish, code, n, msg = "", preemptions = 0) => ({ ev: "end", t, id, finish, code, msg, completion_tokens: n, preemptions });
  const client = [
    spec(0, 4), spec(1, 3),
    { ev: "start", t: T, seed: 1, rate: 1, seconds: 30 },
    sub("A", 0, T + 1), chunk("A", 0, [5, 6], T + 1.1), chunk("A", 2, [7, 8], T + 1.2), end("A", T + 6.2, "length", "OK", 4, "", 1),
    sub("B", 1, T + 2), chunk("B", 0, [9], T + 2.1), chunk("B", 1, [10], T + 2.2), chunk("B", 2, [11], T + 2.3), end("B", T + 2.3, "length", "OK", 3),
    sub("C", 0, T + 3), chunk("C", 0, [5], T + 3.1), { ev: "cancel", t: T + 3.2, id: "C", n_tokens: 1 }, end("C", T + 3.3, "cancelled", "OK", 1),
    sub("D", 1, T + 10), chunk("D", 0, [9], T + 10.1), end("D", T + 12, "error", "UNAVAILABLE", 0, "router gone"),
    { ev: "load_end", t: T + 30, submitted: 4 },
    { ev: "drained", t: T + 31, inflight: 0 },
  ];
  const nemesis = [
    { ev: "fault", n: 1, t: T + 5, kind: "kill_worker", target: "d1", pid: 11, frozen_t: T + 4.7, held: 1 },
    { ev: "start", t: T + 6, target: "d1", role: "decode", pid: 21 },
    { ev: "fault", n: 2, t: T + 7, kind: "pause_worker", target: "p1", pid: 10, frozen_t: T + 7, held: 1 },
    { ev: "resume", t: T + 9, target: "p1", pid: 10 },
    { ev: "fault", n: 3, t: T + 11, kind: "kill_router", pid: 1, held: 1 },
    { ev: "start", t: T + 11.5, target: "router", pid: 2 },
    { ev: "fault", n: 4, t: T + 20, kind: "drain_worker", target: "d2", pid: 12, frozen_t: T + 19.7, held: 2 },
    { ev: "start", t: T + 20.1, target: "d3", role: "decode", pid: 22 },
    { ev: "drain_exit", t: T + 21, target: "d2", pid: 12, rc: 0 },
    { ev: "load_exit", t: T + 31, rc: 0 },
    { ev: "hit", n: 1, kind: "kill_worker", target: "d1", found: true, requeued: 1, why: "disconnected" },
    { ev: "hit", n: 2, kind: "pause_worker", target: "p1", found: true, requeued: 1, why: "missed heartbeats" },
    { ev: "hit", n: 4, kind: "drain_worker", target: "d2", found: true, held: 2, requeued: 0 },
  ];
  const proc = (name, role, pid, fds, rss_kb) => ({ name, role, pid, fds, rss_kb });
  const w = (id, role) => ({ id, role, state: "ready", free_blocks: 100, total_blocks: 100 });
  const p4 = [
    { ev: "baseline", t: T, live: ["p1", "d1", "d2"], status: { active_requests: 0, queued_requests: 0, workers: [w("p1", "prefill"), w("d1", "decode"), w("d2", "decode")] },
      procs: [proc("router", "router", 1, 19, 15000), proc("p1", "prefill", 10, 17, 19000), proc("d1", "decode", 11, 17, 20000), proc("d2", "decode", 12, 17, 20000)] },
    { ev: "final", t: T + 40, live: ["p1", "d1", "d3"], status: { active_requests: 0, queued_requests: 0, workers: [w("p1", "prefill"), w("d1", "decode"), w("d3", "decode")] },
      procs: [proc("router", "router", 2, 19, 15500), proc("p1", "prefill", 10, 18, 21000), proc("d1", "decode", 21, 17, 20500), proc("d3", "decode", 22, 16, 20000)] },
  ];
  return { client, nemesis, p4 };
}

let n = 0, failed = 0;
function run(h) {
  const d = join(root, `h${n++}`);
  mkdirSync(d);
  const lines = (a) => a.map((e) => (typeof e === "string" ? e : JSON.stringify(e))).join("\n") + "\n";
  writeFileSync(join(d, "client.jsonl"), lines(h.client));
  writeFileSync(join(d, "nemesis.jsonl"), lines(h.nemesis));
  writeFileSync(join(d, "p4.json"), lines(h.p4));
  const r = spawnSync("node", [join(here, "check.mjs"), d, refs], { encoding: "utf8" });
  return { rc: r.status, out: r.stdout + r.stderr };
}
function ok(cond, name, why) {
  console.log(`${cond ? "ok" : "not ok"} - ${name}${cond ? "" : ` # ${why}`}`);
  if (!cond) failed++;
}

const find = (h, pred) => h.client.findIndex(pred);
const cases = [
  ["a gap in the indexes", /VIOLATION P2 id=A gap/, (h) => { h.client[find(h, (e) => e.id === "A" && e.i === 2)].i = 3; }],
  ["a duplicate index", /VIOLATION P2 id=A duplicate/, (h) => { h.client[find(h, (e) => e.id === "A" && e.i === 2)].i = 1; }],
  ["a token different from the reference", /VIOLATION P3 id=B finished 'length'.*differs at 1/, (h) => { h.client[find(h, (e) => e.id === "B" && e.i === 1)].toks = [99]; }],
  ["a missing terminal state", /VIOLATION P1 id=B no terminal state/, (h) => { h.client.splice(find(h, (e) => e.id === "B" && e.ev === "end"), 1); }],
  ["two terminal states", /VIOLATION P1 id=A 2 terminal states/, (h) => { const i = find(h, (e) => e.id === "A" && e.ev === "end"); h.client.splice(i + 1, 0, { ...h.client[i] }); }],
  ["a terminal state after the deadline", /VIOLATION P1 id=B terminal state 17\.00 s after submit/, (h) => { h.client[find(h, (e) => e.id === "B" && e.ev === "end")].t = T + 19; }],
  ["a token after the terminal state", /VIOLATION P2 id=B chunk at index 3 after the terminal state/, (h) => { h.client.splice(find(h, (e) => e.id === "B" && e.ev === "end") + 1, 0, { ev: "chunk", t: T + 2.4, id: "B", i: 3, toks: [12], text: "" }); }],
  ["an error no router outage explains", /VIOLATION P3 id=D error UNAVAILABLE/, (h) => { h.nemesis = h.nemesis.filter((e) => e.kind !== "kill_router" && e.target !== "router"); }],
  ["an error whose tokens are not a prefix", /VIOLATION P3 id=D ended UNAVAILABLE after 1 tokens, not a prefix/, (h) => { h.client[find(h, (e) => e.id === "D" && e.ev === "chunk")].toks = [10]; }],
  ["an unexpected error code", /VIOLATION P3 id=D unexpected error INTERNAL/, (h) => { h.client[find(h, (e) => e.id === "D" && e.ev === "end")].code = "INTERNAL"; }],
  ["a cancel nobody asked for", /VIOLATION P3 id=C finished 'cancelled' but the client never cancelled it/, (h) => { h.client.splice(find(h, (e) => e.id === "C" && e.ev === "cancel"), 1); }],
  ["usage disagreeing with the stream", /VIOLATION P2 id=A usage says 5 tokens, 4 streamed/, (h) => { h.client[find(h, (e) => e.id === "A" && e.ev === "end")].completion_tokens = 5; }],
  ["requests left in flight", /VIOLATION P1 2 requests still in flight/, (h) => { h.client[find(h, (e) => e.ev === "drained")].inflight = 2; }],
  ["leaked KV blocks", /VIOLATION P4 worker d1: 90 of 100 KV blocks free/, (h) => { h.p4[1].status.workers[1].free_blocks = 90; }],
  ["requests left in the router", /VIOLATION P4 router holds 1 active/, (h) => { h.p4[1].status.active_requests = 1; }],
  ["a ghost worker in the router's table", /VIOLATION P4 router's worker table \[d1,d2,d3,p1\]/, (h) => { h.p4[1].status.workers.push({ id: "d2", role: "decode", state: "ready", free_blocks: 100, total_blocks: 100 }); }],
  ["descriptors over the baseline", /VIOLATION P4 p1 \(pid 10\): 20 descriptors, idle baseline 17/, (h) => { h.p4[1].procs[1].fds = 20; }],
  ["RSS over the bound", /VIOLATION P4 d3 \(pid 22\): RSS 200000 kB/, (h) => { h.p4[1].procs[3].rss_kb = 200000; }],
  ["a drained worker exiting non-zero", /VIOLATION P4 drained worker d2 \(pid 12\) exited 137/, (h) => { h.nemesis.find((e) => e.ev === "drain_exit").rc = 137; }],
  ["an unreadable history line", /VIOLATION LOG client.jsonl line \d+ unreadable/, (h) => { h.client.splice(5, 0, "{\"ev\":\"chunk\",\"t\":"); }],
  ["a run with no request at all", /VIOLATION LOAD no request reached the router/, (h) => {
    h.client = h.client.filter((e) => !["submit", "chunk", "end", "cancel"].includes(e.ev)); }],
  ["a run where every submit was refused", /VIOLATION LOAD no request reached the router \(4 submits failed\)/, (h) => {
    h.client = h.client.filter((e) => !["chunk", "end", "cancel"].includes(e.ev))
      .map((e) => (e.ev === "submit" ? { ev: "submit_failed", t: e.t, code: "UNAVAILABLE", msg: "refused" } : e)); }],
  ["a run where most submits were refused", /VIOLATION LOAD 5 of 9 submits failed/, (h) => {
    for (let k = 0; k < 5; k++) h.client.splice(3, 0, { ev: "submit_failed", t: T + 0.5, code: "UNAVAILABLE", msg: "refused" }); }],
  ["a kill whose victim held nothing", /VIOLATION HIT fault 1 \(kill_worker d1\): the router re-dispatched nothing/, (h) => {
    h.nemesis.find((e) => e.ev === "hit" && e.n === 1).requeued = 0; }],
  ["a pause the router never noticed", /VIOLATION HIT fault 2 \(pause_worker p1\): the router never removed it/, (h) => {
    h.nemesis = h.nemesis.filter((e) => !(e.ev === "hit" && e.n === 2)); }],
  ["a drain of an idle worker", /VIOLATION HIT fault 4 \(drain_worker d2\): it held nothing/, (h) => {
    h.nemesis.find((e) => e.ev === "hit" && e.n === 4).held = 0; }],
  ["(passes) a drained worker that left its tasks to be re-dispatched", null, (h) => {
    Object.assign(h.nemesis.find((e) => e.ev === "hit" && e.n === 4), { held: 0, requeued: 2 }); }],
  ["(passes) a drained worker that got its tasks just after its draining line and computed them", null, (h) => {
    Object.assign(h.nemesis.find((e) => e.ev === "hit" && e.n === 4), { held: 0, requeued: 0, drained: 40 }); }],
  ["a drain that held nothing, computed nothing and left nothing", /VIOLATION HIT fault 4 \(drain_worker d2\): it held nothing/, (h) => {
    Object.assign(h.nemesis.find((e) => e.ev === "hit" && e.n === 4), { held: 0, requeued: 0, drained: 0 }); }],
  ["a router kill with nothing in flight", /VIOLATION HIT fault 3 \(kill_router\): no request in flight/, (h) => {
    const f = h.nemesis.find((e) => e.kind === "kill_router"); f.t = T + 0.5; }],
  ["worker faults after which no re-dispatched request finished", /VIOLATION HIT 2 worker kills\/pauses, but no request re-dispatched/, (h) => {
    h.client.find((e) => e.id === "A" && e.ev === "end").preemptions = 0; }],
  ["one token past the reference without an eos finish", /VIOLATION P3 id=B finished 'length' with 4 tokens, reference 3/, (h) => {
    h.client.find((e) => e.id === "B" && e.ev === "submit").ignore_eos = false;
    const i = find(h, (e) => e.id === "B" && e.ev === "end");
    h.client.splice(i, 0, { ev: "chunk", t: T + 2.25, id: "B", i: 3, toks: [2], text: "" });
    h.client[i + 1].completion_tokens = 4; }],
];
console.log(`1..${3 + cases.length + 2}`);
{
  const r = run(clean());
  ok(r.rc === 0 && /"violations":0/.test(r.out), "a clean history passes", r.out.split("\n").slice(0, 5).join(" | "));
  ok(/"requests":4,"finished":2,"cancelled":1,"errors":1/.test(r.out), "the summary counts requests, finishes, cancels and errors", r.out);
  ok(/"faults":\{"kill_worker":1,"pause_worker":1,"kill_router":1,"drain_worker":1\},"faults_hit":4,"migrated_ok":1/.test(r.out),
     "the summary counts faults by kind, the faults that hit work and the re-dispatched requests that finished", r.out);
}

for (const [name, re, doctor] of cases) {
  const h = clean();
  doctor(h);
  const r = run(h);
  if (re === null) { // a history that must still pass
    ok(r.rc === 0 && /"violations":0/.test(r.out), name, r.out.split("\n").filter((l) => l.startsWith("VIOLATION")).join(" | "));
    continue;
  }
  ok(r.rc === 1 && re.test(r.out), `reports ${name}`, `rc ${r.rc}: ${r.out.split("\n").filter((l) => l.startsWith("VIOLATION")).join(" | ") || r.out.slice(0, 300)}`);
}
// hits.mjs reads the logs right: the removal after the fault (not an
// earlier one), its requeues (across the failed cancels to the dead
// worker), a drained worker's own account of what it held.
{
  const d = join(root, "hits"), logs = join(d, "logs");
  mkdirSync(logs, { recursive: true });
  const iso = (t) => new Date(t * 1000).toISOString();
  writeFileSync(join(d, "nemesis.jsonl"), [
    { ev: "fault", n: 1, t: T + 5, frozen_t: T + 4.7, kind: "kill_worker", target: "d1", pid: 11, held: 2 },
    { ev: "fault", n: 2, t: T + 9, frozen_t: T + 8.7, kind: "drain_worker", target: "p1", pid: 10, held: 1 },
  ].map((e) => JSON.stringify(e)).join("\n") + "\n");
  writeFileSync(join(logs, "router.log"), [
    `${iso(T + 1)} WARN router event=worker_removed worker=d1 why="missed heartbeats"`,
    `${iso(T + 1)} INFO router event=requeue req=1 epoch=1 generated=3 why="missed heartbeats"`,
    `${iso(T + 5.001)} WARN router event=worker_removed worker=d1 why="disconnected"`,
    `${iso(T + 5.001)} INFO router event=requeue req=2 epoch=1 generated=3 why="disconnected"`,
    `${iso(T + 5.001)} WARN router event=send_failed worker=d1 type=cancel msg="peer gone"`,
    `${iso(T + 5.001)} INFO router event=requeue req=3 epoch=1 generated=0 why="disconnected"`,
    `${iso(T + 5.002)} INFO router event=request_done req=4`,
    `${iso(T + 5.003)} INFO router event=requeue req=5 epoch=2 generated=0 why="disconnected"`,
    `${iso(T + 9.0)} WARN router event=worker_removed worker=p1 why="left (drained)"`,
    `${iso(T + 9.0)} INFO router event=requeue req=6 epoch=1 generated=0 why="left (drained)"`,
  ].join("\n") + "\n");
  writeFileSync(join(logs, "p1.log"), [
    `${iso(T + 2)} INFO p1 event=draining deadline_ms=8000 prefill_tasks=0 decode_seqs=0`,
    `${iso(T + 3)} INFO p1 event=stopped prefill_busy=0 decode_busy=0 drained_prefill_tokens=7 drained_decode_tokens=0`,
    `${iso(T + 8.9)} INFO p1 event=draining deadline_ms=8000 prefill_tasks=3 decode_seqs=0`,
    `${iso(T + 9.5)} INFO p1 event=stopped prefill_busy=0 decode_busy=0 drained_prefill_tokens=96 drained_decode_tokens=1`,
  ].join("\n") + "\n");
  const r = spawnSync("node", [join(here, "hits.mjs"), d, logs], { encoding: "utf8" });
  const hits = readFileSync(join(d, "nemesis.jsonl"), "utf8").split("\n").filter(Boolean).map(JSON.parse)
    .filter((e) => e.ev === "hit");
  const h1 = hits.find((e) => e.n === 1), h2 = hits.find((e) => e.n === 2);
  ok(r.status === 0 && h1 && h1.found && h1.requeued === 2 && h1.why === "disconnected",
     "hits.mjs: a kill's hit is the requeues of the first removal after it", JSON.stringify(hits) + r.stderr);
  ok(h2 && h2.found && h2.held === 3 && h2.requeued === 1 && h2.drained === 97,
     "hits.mjs: a drain's hit is what the worker held when its drain began, what it computed until it stopped, and what was re-dispatched when it left", JSON.stringify(hits));
}
rmSync(root, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
