// check.mjs -- checks a soak history (tests/soak/soak.sh) against the
// promises P1-P4 of docs/operations.md.
//
//   node tests/soak/check.mjs HISTORY_DIR REFS_DIR [--tap] [--no-rss]
//
// HISTORY_DIR/client.jsonl   every client-visible event (tests/helpers/soak_load.c)
// HISTORY_DIR/nemesis.jsonl  every injected fault, restart and drained exit
// HISTORY_DIR/p4.json        the idle state before ("baseline") and after ("final")
// REFS_DIR/ref_K.txt         pd-run --tokens for spec K (the fault-free output)
//
// Besides P1-P4 (docs/operations.md): LOAD, the run was a real load (requests
// reached the router and finished; a run where every submit failed proves
// nothing), and HIT, every fault hit work in flight (a worker fault: the
// requests the router re-dispatched, or the drained worker held or left to
// be re-dispatched, from
// tests/soak/hits.mjs's "hit" events; a router kill: requests in flight at
// the kill) and some request re-dispatched by a worker fault finished whole.
//
// Prints every violation as "VIOLATION Pn id=REQUEST what" (or "# ..." with
// --tap, then one ok/not ok line per promise), then a summary; exits 1 when
// there is any violation, 2 when the history cannot be read.
import { readFileSync, existsSync } from "node:fs";

const args = process.argv.slice(2);
const tap = args.includes("--tap");
// --no-rss: ASan builds (its quarantine keeps freed memory resident by
// design); LeakSanitizer at the processes' exit checks leaks instead.
const checkRss = !args.includes("--no-rss");
const [dir, refsDir] = args.filter((a) => !a.startsWith("--"));
if (!dir || !refsDir) {
  console.error("usage: check.mjs HISTORY_DIR REFS_DIR [--tap] [--no-rss]");
  process.exit(2);
}

// Bounds, stated here and in docs/operations.md.
const P1_GRACE_S = 6.0;        // deadline + the client library's 5 s grace + 1 s scheduling slack
const OUTAGE_SETTLE_S = 6.0;   // after a router restart: workers re-register (2 s liveness), queue refills
const FD_SLACK = 2;            // descriptors over the idle baseline of the process's role
const RSS_FACTOR = 1.5, RSS_SLACK_KB = 65536; // RSS <= 1.5 x baseline + 64 MiB
const OK_ERRORS = new Set(["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"]);

function readLines(path, required) {
  if (!existsSync(path)) {
    if (required) {
      console.error(`check.mjs: ${path} missing`);
      process.exit(2);
    }
    return [];
  }
  const out = [];
  const lines = readFileSync(path, "utf8").split("\n");
  for (let n = 0; n < lines.length; n++) {
    if (lines[n].length === 0) continue;
    try {
      out.push(JSON.parse(lines[n]));
    } catch (e) {
      out.push({ ev: "unparsable", line: n + 1, text: lines[n].slice(0, 80) });
    }
  }
  return out;
}

const client = readLines(`${dir}/client.jsonl`, true);
const nemesis = readLines(`${dir}/nemesis.jsonl`, false);
const p4 = readLines(`${dir}/p4.json`, false);

const violations = [];
const perP = { P1: 0, P2: 0, P3: 0, P4: 0, LOAD: 0, HIT: 0, LOG: 0 };
function violate(p, id, what) {
  perP[p]++;
  violations.push(`VIOLATION ${p}${id !== null ? ` id=${id}` : ""} ${what}`);
}

// ====== References ======
const specs = new Map();
const refs = new Map();
for (const e of client) if (e.ev === "spec") specs.set(e.k, e);
function ref(k) {
  if (!refs.has(k)) {
    const p = `${refsDir}/ref_${k}.txt`;
    refs.set(k, existsSync(p)
      ? readFileSync(p, "utf8").trim().split(/\s+/).filter((s) => s.length).map(Number) : null);
  }
  return refs.get(k);
}

// ====== Router outages: [kill, restart + settle] ======
const outages = [];
const faults = {};
let lastKill = null;
for (const e of nemesis) {
  if (e.ev === "fault") faults[e.kind] = (faults[e.kind] || 0) + 1;
  if (e.ev === "fault" && e.kind === "kill_router") lastKill = e.t;
  if (e.ev === "start" && e.target === "router" && lastKill !== null) {
    outages.push([lastKill, e.t + OUTAGE_SETTLE_S]);
    lastKill = null;
  }
  if (e.ev === "drain_exit" && e.rc !== 0)
    violate("P4", null, `drained worker ${e.target} (pid ${e.pid}) exited ${e.rc}, not 0`);
  if (e.ev === "load_exit" && e.rc !== 0)
    violate("P1", null, `the load client exited ${e.rc}: requests left without a terminal state`);
}
if (lastKill !== null) outages.push([lastKill, Infinity]);
const inOutage = (t0, t1) => outages.some(([a, b]) => t0 <= b && t1 >= a);

// ====== Replay the client's history ======
const reqs = new Map();
let submitFailed = 0, cancels = 0, drained = null;
for (const e of client) {
  if (e.ev === "unparsable" || e.ev === "log_error") {
    violate("LOG", null, `client.jsonl line ${e.line ?? "?"} unreadable: ${e.text ?? e.ev}`);
    continue;
  }
  if (e.ev === "submit_failed") { submitFailed++; continue; }
  if (e.ev === "drained") { drained = e; continue; }
  if (e.ev === "submit") {
    if (reqs.has(e.id)) violate("P1", e.id, "request id submitted twice");
    reqs.set(e.id, { sub: e, toks: [], ends: [], cancel: null, afterEnd: 0, p2: null });
    continue;
  }
  if (e.ev !== "chunk" && e.ev !== "end" && e.ev !== "cancel") continue;
  const r = reqs.get(e.id);
  if (!r) {
    violate(e.ev === "end" ? "P1" : "P2", e.id, `${e.ev} for a request never submitted`);
    continue;
  }
  if (e.ev === "cancel") {
    cancels++;
    if (r.cancel === null) r.cancel = e;
    continue;
  }
  if (e.ev === "chunk") {
    if (r.ends.length > 0) {
      violate("P2", e.id, `chunk at index ${e.i} after the terminal state`);
      continue;
    }
    if (e.bad_text) violate("P2", e.id, `chunk ${e.i}: text not valid UTF-8`);
    if (e.toks.length > 0 && e.i !== r.toks.length && r.p2 === null) {
      r.p2 = e.i < r.toks.length
        ? `duplicate: chunk index ${e.i} but ${r.toks.length} tokens already received`
        : `gap: chunk index ${e.i} but ${r.toks.length} expected`;
      violate("P2", e.id, r.p2);
    }
    r.toks.push(...e.toks);
    continue;
  }
  r.ends.push(e);
}

// ====== Per request ======
const count = { submitted: reqs.size, finished: 0, errors: 0, cancelled: 0 };
const byFinish = {}, byCode = {};
let maxLate = -Infinity, migratedOk = 0;
for (const [id, r] of reqs) {
  const s = r.sub;
  // P1: exactly one terminal state, before the deadline (+ grace).
  if (r.ends.length === 0) {
    violate("P1", id, `no terminal state (spec ${s.spec}, ${r.toks.length} tokens received)`);
    continue;
  }
  if (r.ends.length > 1)
    violate("P1", id, `${r.ends.length} terminal states (${r.ends.map((e) => e.finish + "/" + e.code).join(", ")})`);
  const end = r.ends[0];
  const took = end.t - s.t, late = took - s.deadline_ms / 1000;
  if (late > maxLate) maxLate = late;
  if (late > P1_GRACE_S)
    violate("P1", id, `terminal state ${took.toFixed(2)} s after submit, deadline ${s.deadline_ms} ms (+${P1_GRACE_S} s grace)`);
  // P3: output against the fault-free reference.
  const want = ref(s.spec);
  if (want === null) {
    violate("P3", id, `no reference for spec ${s.spec}`);
    continue;
  }
  // pd-run does not print the end-of-generation token: only a stream that
  // ended "eos" has one more token than its reference.
  const got = end.finish === "eos" ? r.toks.slice(0, -1) : r.toks;
  const firstDiff = () => {
    let k = 0;
    while (k < got.length && k < want.length && got[k] === want[k]) k++;
    return k;
  };
  const prefix = got.length <= want.length && firstDiff() === got.length;
  if (end.code === "OK") {
    byFinish[end.finish] = (byFinish[end.finish] || 0) + 1;
    if (end.finish === "cancelled") {
      count.cancelled++;
      if (r.cancel === null) violate("P3", id, "finished 'cancelled' but the client never cancelled it");
      if (!prefix)
        violate("P3", id, `cancelled after ${r.toks.length} tokens, not a prefix of the reference (differs at ${firstDiff()})`);
    } else {
      count.finished++;
      if ((end.preemptions ?? 0) > 0) migratedOk++;
      if (end.finish === "eos" && s.ignore_eos) violate("P3", id, "finished 'eos' with ignore_eos");
      const same = got.length === want.length && firstDiff() === want.length;
      if (!same)
        violate("P3", id, `finished '${end.finish}' with ${got.length} tokens, reference ${want.length}, differs at ${firstDiff()} (spec ${s.spec})`);
      if (end.completion_tokens !== r.toks.length)
        violate("P2", id, `usage says ${end.completion_tokens} tokens, ${r.toks.length} streamed`);
    }
  } else {
    count.errors++;
    byCode[end.code] = (byCode[end.code] || 0) + 1;
    if (!OK_ERRORS.has(end.code))
      violate("P3", id, `unexpected error ${end.code}: ${end.msg}`);
    else if (end.code === "CANCELLED" && r.cancel === null)
      violate("P3", id, "CANCELLED but the client never cancelled it");
    else if (end.code !== "CANCELLED" && !inOutage(s.t, end.t))
      // Worker faults are to be invisible; only a router outage explains an error.
      violate("P3", id, `error ${end.code} (${end.msg}) with no router outage during the request`);
    if (!prefix)
      violate("P3", id, `ended ${end.code} after ${r.toks.length} tokens, not a prefix of the reference (differs at ${firstDiff()})`);
  }
}
if (drained === null) violate("P1", null, "the load client never reported the end of its drain");
else if (drained.inflight !== 0) violate("P1", null, `${drained.inflight} requests still in flight when the client gave up`);

// ====== LOAD: a real load ======
// At least one request, at least half of the submit attempts reached the
// router (the rest: router outages), at least half of those finished OK.
const attempts = count.submitted + submitFailed;
if (count.submitted === 0) violate("LOAD", null, `no request reached the router (${submitFailed} submits failed)`);
else if (submitFailed * 2 > attempts)
  violate("LOAD", null, `${submitFailed} of ${attempts} submits failed: the router was mostly unreachable`);
if (count.submitted > 0 && count.finished * 2 < count.submitted)
  violate("LOAD", null, `only ${count.finished} of ${count.submitted} requests finished`);

// ====== HIT: every fault hit work in flight ======
const hits = new Map(nemesis.filter((e) => e.ev === "hit").map((e) => [e.n, e]));
let faultsHit = 0, nWorkerFaults = 0;
for (const e of nemesis) {
  if (e.ev !== "fault") continue;
  const what = `fault ${e.n ?? "?"} (${e.kind}${e.target ? " " + e.target : ""})`;
  if (e.kind === "kill_router") {
    let inflight = 0;
    for (const r of reqs.values())
      if (r.sub.t < e.t && (r.ends.length === 0 || r.ends[0].t > e.t)) inflight++;
    if (inflight === 0) violate("HIT", null, `${what}: no request in flight at the kill`);
    else faultsHit++;
    continue;
  }
  const h = hits.get(e.n);
  if (e.kind === "kill_worker" || e.kind === "pause_worker") nWorkerFaults++;
  if (!h || !h.found)
    violate("HIT", null, `${what}: ${e.kind === "drain_worker" ? "no event=draining in its log" : "the router never removed it"}`);
  else if (e.kind === "drain_worker" ? !(h.held >= 1 || h.requeued >= 1 || h.drained >= 1) : !(h.requeued >= 1))
    violate("HIT", null, `${what}: ${e.kind === "drain_worker" ? "it held nothing when its drain began, computed nothing while draining, and nothing was re-dispatched when it left" : "the router re-dispatched nothing on its removal"}`);
  else faultsHit++;
}
if (nWorkerFaults > 0 && migratedOk === 0)
  violate("HIT", null, `${nWorkerFaults} worker kills/pauses, but no request re-dispatched by one finished`);

// ====== P4: the idle state after the storm ======
const base = p4.find((e) => e.ev === "baseline"), fin = p4.find((e) => e.ev === "final");
const p4Notes = [];
if (!base || !fin) {
  violate("P4", null, "p4.json lacks the baseline or the final state");
} else if (!fin.status) {
  violate("P4", null, "the router did not answer status after the run");
} else {
  const st = fin.status;
  if (st.active_requests !== 0 || st.queued_requests !== 0)
    violate("P4", null, `router holds ${st.active_requests} active, ${st.queued_requests} queued requests when idle`);
  for (const w of st.workers) {
    if (w.free_blocks !== w.total_blocks)
      violate("P4", null, `worker ${w.id}: ${w.free_blocks} of ${w.total_blocks} KV blocks free when idle`);
    if (w.state !== "ready") violate("P4", null, `worker ${w.id}: state ${w.state} when idle`);
  }
  const have = st.workers.map((w) => w.id).sort().join(",");
  const live = [...fin.live].sort().join(",");
  if (have !== live) violate("P4", null, `router's worker table [${have}] but live workers [${live}]`);
  const roleBase = {};
  for (const p of base.procs) {
    const b = roleBase[p.role] || { fds: 0, rss_kb: 0 };
    roleBase[p.role] = { fds: Math.max(b.fds, p.fds), rss_kb: Math.max(b.rss_kb, p.rss_kb) };
  }
  for (const p of fin.procs) {
    const own = base.procs.find((b) => b.pid === p.pid && b.name === p.name);
    const b = own || roleBase[p.role];
    if (!b) { violate("P4", null, `${p.name}: no baseline for role ${p.role}`); continue; }
    p4Notes.push(`${p.name} fds ${b.fds}->${p.fds} rss ${(b.rss_kb / 1024).toFixed(1)}->${(p.rss_kb / 1024).toFixed(1)} MiB`);
    if (p.fds === 0) violate("P4", null, `${p.name} (pid ${p.pid}) is not running at the end`);
    else if (p.fds > b.fds + FD_SLACK)
      violate("P4", null, `${p.name} (pid ${p.pid}): ${p.fds} descriptors, idle baseline ${b.fds} (+${FD_SLACK})`);
    if (checkRss && p.rss_kb > b.rss_kb * RSS_FACTOR + RSS_SLACK_KB)
      violate("P4", null, `${p.name} (pid ${p.pid}): RSS ${p.rss_kb} kB, bound ${RSS_FACTOR} x ${b.rss_kb} + ${RSS_SLACK_KB} kB`);
  }
}

// ====== Report ======
const summary = {
  requests: count.submitted, finished: count.finished, cancelled: count.cancelled,
  errors: count.errors, errors_by_code: byCode, finish_reasons: byFinish,
  cancels_sent: cancels, submit_failed: submitFailed, faults, faults_hit: faultsHit,
  migrated_ok: migratedOk, router_outages: outages.length,
  max_late_s: Number.isFinite(maxLate) ? Number(maxLate.toFixed(3)) : null,
  violations: violations.length,
};
const shown = violations.slice(0, 200);
for (const v of shown) console.log(tap ? `# ${v}` : v);
if (violations.length > shown.length) console.log(`${tap ? "# " : ""}... ${violations.length - shown.length} more`);
for (const n of p4Notes) console.log(`# P4 ${n}`);
if (tap) {
  const line = (p, what) => console.log(`${perP[p] === 0 ? "ok" : "not ok"} - ${p} ${what}${perP[p] ? ` # ${perP[p]} violations` : ""}`);
  line("P1", `exactly one terminal state within the deadline (${count.submitted} requests)`);
  line("P2", "token indexes 0..n-1, no gap, no duplicate, nothing after the end");
  line("P3", `finished output equals pd-run, errors only across router outages, partial output a prefix (${count.finished} finished)`);
  line("P4", "idle state: KV blocks, router tables, descriptors and RSS back to baseline");
  line("LOAD", `a real load: requests reached the router and finished (${count.submitted} submitted, ${submitFailed} refused)`);
  line("HIT", `every fault hit work in flight (${faultsHit} faults), re-dispatched requests finished (${migratedOk})`);
  line("LOG", "history readable");
}
console.log(`# summary ${JSON.stringify(summary)}`);
process.exit(violations.length ? 1 : 0);
