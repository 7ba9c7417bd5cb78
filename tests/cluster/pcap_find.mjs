// pcap_find.mjs -- what a loopback capture (tcpdump -w) shows of each link.
//
//   node tests/cluster/pcap_find.mjs FILE.pcap NAME=PORT... -- NEEDLE_NAME=HEX...
//
// Reassembles the TCP payload of every connection direction (IPv4, in
// capture order; loopback does not reorder) and attributes it to the link
// whose server PORT it touches. Prints one JSON object:
//   { "links": { NAME: { "bytes": N, "segments": N,
//                        "found": { NEEDLE_NAME: true|false, ... } } },
//     "packets": N }
// A needle found in any direction's byte stream of a link counts for it.
// Reads only classic pcap (the format tcpdump -w writes), link types
// EN10MB (Ethernet, what Linux gives for lo) and LINUX_SLL; anything else
// is an error (exit 2), never a silent "not found".
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const sep = args.indexOf("--");
if (args.length < 3 || sep < 2) {
  console.error("usage: pcap_find.mjs FILE NAME=PORT... -- NEEDLE=HEX...");
  process.exit(2);
}
const buf = readFileSync(args[0]);
const links = {};
for (const a of args.slice(1, sep)) {
  const [name, port] = a.split("=");
  links[name] = { port: Number(port), bytes: 0, segments: 0, streams: new Map() };
}
const needles = args.slice(sep + 1).map((a) => {
  const [name, hex] = a.split("=");
  return { name, bytes: Buffer.from(hex, "hex") };
});

function die(msg) {
  console.error(`pcap_find: ${msg}`);
  process.exit(2);
}
if (buf.length < 24) die("file shorter than a pcap header");
const magic = buf.readUInt32LE(0);
let le;
if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true;
else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false;
else die(`not a classic pcap file (magic ${magic.toString(16)})`);
const u32 = (o) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
const linktype = u32(20);
let l2;
if (linktype === 1) l2 = 14;
else if (linktype === 113) l2 = 16;
else die(`link type ${linktype}: only EN10MB and LINUX_SLL are read`);

let off = 24, packets = 0;
while (off + 16 <= buf.length) {
  const incl = u32(off + 8);
  const p = off + 16;
  off = p + incl;
  if (off > buf.length) die("truncated packet record");
  packets++;
  const ip = p + l2;
  if (ip + 20 > off || buf[ip] >> 4 !== 4) continue; // IPv4 only (we bind 127.0.0.1)
  const ihl = (buf[ip] & 15) * 4;
  if (buf[ip + 9] !== 6) continue; // TCP
  const tcp = ip + ihl;
  if (tcp + 20 > off) continue;
  const sport = buf.readUInt16BE(tcp), dport = buf.readUInt16BE(tcp + 2);
  const doff = (buf[tcp + 12] >> 4) * 4;
  const ipEnd = Math.min(off, ip + buf.readUInt16BE(ip + 2));
  const payload = buf.subarray(tcp + doff, ipEnd);
  if (payload.length === 0) continue;
  for (const l of Object.values(links)) {
    if (sport !== l.port && dport !== l.port) continue;
    const key = `${sport}>${dport}`;
    if (!l.streams.has(key)) l.streams.set(key, []);
    l.streams.get(key).push(payload);
    l.bytes += payload.length;
    l.segments++;
  }
}

const out = { links: {}, packets };
for (const [name, l] of Object.entries(links)) {
  const found = {};
  const joined = [...l.streams.values()].map((parts) => Buffer.concat(parts));
  for (const n of needles) found[n.name] = joined.some((b) => b.indexOf(n.bytes) >= 0);
  out.links[name] = { bytes: l.bytes, segments: l.segments, directions: l.streams.size, found };
}
console.log(JSON.stringify(out));
