// hits.mjs -- what each worker fault of a soak run hit, from the logs.
//
//   node tests/soak/hits.mjs HISTORY_DIR LOG_DIR
//
// For every {"ev":"fault"} of HISTORY_DIR/nemesis.jsonl on a worker, appends
// one {"ev":"hit","n","kind","target",...} line to nemesis.jsonl:
//   kill_worker, pause_worker: "requeued" -- the requests the router
//     re-dispatched when it removed the worker (the first
//     "event=worker_removed worker=ID" after the fault in any router log
//     LOG_DIR/router*.log, then its "event=requeue ... why=" lines);
//   drain_worker: "held" -- prefill_tasks + decode_seqs of the worker's own
//     "event=draining" line after the fault (LOG_DIR/ID.log) -- and
//     "requeued", as above: a worker stopped for the aim and drained on
//     resuming may leave before it reads the tasks waiting in its socket
//     (it saw its stop flag first); the router then re-dispatches them --
//     and "drained", the prompt + output tokens it computed between its
//     "event=draining" and "event=stopped" lines (work the router had sent
//     it that reached the compute thread just after the draining line).
// "found": false when the log has no such line. tests/soak/check.mjs fails
// every fault that did not hit work in flight (and kill_router faults from
// the client history: requests in flight at the kill).
import { readFileSync, readdirSync, existsSync, appendFileSync } from "node:fs";
import path from "node:path";

const [dir, logDir] = process.argv.slice(2);
if (!dir || !logDir) {
  console.error("usage: hits.mjs HISTORY_DIR LOG_DIR");
  process.exit(2);
}
const events = readFileSync(path.join(dir, "nemesis.jsonl"), "utf8").split("\n").filter(Boolean)
  .map((l) => { try { return JSON.parse(l); } catch { return {}; } });

// "2026-12-06T23:00:57.224Z INFO router event=..." -> [seconds, rest]
function parse(line) {
  const sp = line.indexOf(" ");
  const t = Date.parse(line.slice(0, sp));
  return Number.isNaN(t) ? null : [t / 1000, line];
}
const field = (line, k) => { const m = new RegExp(` ${k}=("[^"]*"|\\S+)`).exec(line); return m ? m[1] : null; };

// Every removal in every router log: {t, worker, requeued}.
const removals = [];
for (const f of readdirSync(logDir).filter((f) => /^router.*\.log$/.test(f)).sort()) {
  let cur = null;
  for (const raw of readFileSync(path.join(logDir, f), "utf8").split("\n")) {
    const p = parse(raw);
    if (!p) continue;
    const [t, line] = p;
    if (line.includes(" event=worker_removed ")) {
      cur = { t, worker: field(line, "worker"), why: field(line, "why"), requeued: 0 };
      removals.push(cur);
    } else if (cur && line.includes(" event=requeue ") && field(line, "why") === cur.why) {
      cur.requeued++;
    } else if (cur && line.includes(` event=send_failed worker=${cur.worker} `)) {
      // the cancel of a requeued request, sent to the dead worker
    } else {
      cur = null;
    }
  }
}
removals.sort((a, b) => a.t - b.t);

// A log line's time has millisecond resolution; the fault's is the moment
// its victim was stopped, before anything could be removed.
const SLACK_S = 0.002;
const out = [];
for (const e of events) {
  if (e.ev !== "fault" || e.kind === "kill_router") continue;
  const since = (e.frozen_t ?? e.t) - SLACK_S;
  const hit = { ev: "hit", n: e.n, kind: e.kind, target: e.target };
  const r = removals.find((x) => x.worker === e.target && x.t >= since);
  hit.found = Boolean(r);
  hit.requeued = r ? r.requeued : 0;
  if (r) hit.why = r.why.replace(/"/g, "");
  if (e.kind === "drain_worker") {
    const log = path.join(logDir, `${e.target}.log`);
    const line = existsSync(log) ? readFileSync(log, "utf8").split("\n").map(parse)
      .find((p) => p && p[0] >= since && p[1].includes(" event=draining ")) : undefined;
    hit.found = hit.found || Boolean(line);
    hit.held = line ? Number(field(line[1], "prefill_tasks")) + Number(field(line[1], "decode_seqs")) : 0;
    // Work that reached the compute thread after the draining line (the
    // link's I/O thread forwards what waited in the socket on resuming):
    // the tokens computed during the drain, from the "event=stopped" line.
    const stop = line ? readFileSync(log, "utf8").split("\n").map(parse)
      .find((p) => p && p[0] >= line[0] && p[1].includes(" event=stopped ")) : undefined;
    hit.drained = stop ? Number(field(stop[1], "drained_prefill_tokens") || 0) +
      Number(field(stop[1], "drained_decode_tokens") || 0) : 0;
  }
  out.push(JSON.stringify(hit));
}
if (out.length) appendFileSync(path.join(dir, "nemesis.jsonl"), out.join("\n") + "\n");
