// check.mjs -- validates Kubernetes manifests offline, as an API server with
// strict field validation would (kubectl apply's default since 1.27):
//
//   node tests/deploy/k8s-check/check.mjs FILE.yaml...
//
// For every YAML document (kustomization.yaml files are skipped: they are
// not API objects):
//   1. the schema of its apiVersion/kind (the `kubernetes-models` npm package:
//      Kubernetes' OpenAPI schemas compiled to validators): types, required
//      fields, enums, formats;
//   2. no unknown field anywhere (a typo such as `livenessprobe` would be
//      dropped silently by a lenient client): every key is checked against the
//      object's type, read from the package's type declarations;
//   3. what the API server checks beyond the schema for our kinds: a
//      Deployment's selector matches its pod template's labels, container
//      and port names are unique.
// Prints "ok FILE: N objects" or one line per problem, "FILE: doc I KIND/NAME:
// PATH: what"; exits 1 on any problem. Nothing is fetched: the schemas are in
// node_modules (scripts/k8s-deps.sh installs them).
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const modRoot = join(here, "node_modules");

// ====== 1. schema ======

function modelPath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

async function schemaErrors(doc) {
  let mod;
  try {
    mod = await import(modelPath(doc.apiVersion, doc.kind));
  } catch {
    return [`unknown apiVersion/kind ${doc.apiVersion}/${doc.kind}`];
  }
  const Model = mod[doc.kind];
  try {
    new Model(doc).validate();
    return [];
  } catch (e) {
    return (e.errors || [{ instancePath: "", message: e.message }]).map(
      (x) => `${x.instancePath.replace(/^\//, "").replace(/\//g, ".") || "(top)"}: ${x.message}`);
  }
}

// ====== 2. unknown fields, from the type declarations ======

const declCache = new Map();

// The .d.ts file an import names, from the file that imports it.
function resolveDecl(spec, fromFile) {
  const bare = spec.replace(/\.js$/, "");
  const file = spec.startsWith(".") ? join(dirname(fromFile), bare) : join(modRoot, bare);
  return `${file}.d.ts`;
}

// Fields of the first interface in a declaration file: name -> type text.
// null when the file declares an alias (string | number, ...), not an object.
function readDecl(file) {
  if (declCache.has(file)) return declCache.get(file);
  let out = null;
  if (existsSync(file)) {
    const text = readFileSync(file, "utf8");
    const imports = new Map();
    for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) imports.set(m[1], resolveDecl(m[2], file));
    const start = text.search(/export interface \w+( extends [\w, ]+)? \{/);
    if (start >= 0) {
      const body = text.slice(text.indexOf("{", start) + 1);
      const fields = new Map();
      let depth = 0, cur = null;
      for (const line of body.split("\n")) {
        if (depth === 0) {
          if (/^\}/.test(line)) break;
          const m = line.match(/^ {4}"([^"]+)"\??: (.*)$/);
          if (m) cur = { name: m[1], type: m[2] };
        } else if (cur) cur.type += " " + line.trim();
        depth += (line.match(/\{/g) || []).length - (line.match(/\}/g) || []).length;
        if (depth === 0 && cur) { fields.set(cur.name, cur.type.replace(/;$/, "").trim()); cur = null; }
      }
      out = { fields, imports };
    }
  }
  declCache.set(file, out);
  return out;
}

function walk(value, type, decl, path, problems) {
  if (value === null || typeof value !== "object") return;
  type = type.trim();
  let m;
  if ((m = type.match(/^Array<(.*)>$/))) {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, m[1], decl, `${path}[${i}]`, problems));
    return;
  }
  if ((m = type.match(/^\{ \[key: string\]: (.*); \}$/))) {
    for (const [k, v] of Object.entries(value)) walk(v, m[1], decl, `${path}.${k}`, problems);
    return;
  }
  const file = decl.imports.get(type);
  if (!file) return; // a primitive, a union of literals, or a free-form object
  const inner = readDecl(file);
  if (inner) checkObject(value, inner, path, problems);
}

function checkObject(obj, decl, path, problems) {
  if (Array.isArray(obj)) return;
  for (const [k, v] of Object.entries(obj)) {
    const p = path ? `${path}.${k}` : k;
    if (!decl.fields.has(k)) {
      problems.push(`${p}: unknown field (known: ${[...decl.fields.keys()].join(", ")})`);
      continue;
    }
    walk(v, decl.fields.get(k), decl, p, problems);
  }
}

function unknownFields(doc) {
  const spec = modelPath(doc.apiVersion, doc.kind);
  let file;
  try {
    file = fileURLToPath(import.meta.resolve(spec)).replace(/\.js$/, ".d.ts");
  } catch {
    return [];
  }
  const decl = readDecl(file);
  const problems = [];
  if (decl) checkObject(doc, decl, "", problems);
  return problems;
}

// ====== 3. what the API server checks beyond the schema ======

function podSpecOf(doc) {
  return ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"].includes(doc.kind)
    ? doc.spec?.template?.spec : doc.kind === "Pod" ? doc.spec : null;
}

function semantic(doc) {
  const problems = [];
  if (["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"].includes(doc.kind)) {
    const sel = doc.spec?.selector?.matchLabels || {};
    const labels = doc.spec?.template?.metadata?.labels || {};
    for (const [k, v] of Object.entries(sel))
      if (labels[k] !== v) problems.push(`spec.selector.matchLabels.${k}: does not match the template's labels`);
  }
  const ps = podSpecOf(doc);
  if (ps) {
    const names = new Set();
    for (const c of [...(ps.initContainers || []), ...(ps.containers || [])]) {
      if (names.has(c.name)) problems.push(`container name ${c.name}: duplicated`);
      names.add(c.name);
      const ports = new Set();
      for (const p of c.ports || []) {
        if (p.name && ports.has(p.name)) problems.push(`container ${c.name}: port name ${p.name} duplicated`);
        ports.add(p.name);
      }
    }
    const vols = new Set((ps.volumes || []).map((v) => v.name));
    for (const c of ps.containers || [])
      for (const vm of c.volumeMounts || [])
        if (!vols.has(vm.name)) problems.push(`container ${c.name}: volumeMount ${vm.name}: no such volume`);
  }
  return problems;
}

// ====== main ======

let bad = 0;
for (const file of process.argv.slice(2)) {
  if (/(^|\/)kustomization\.ya?ml$/.test(file)) continue;
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  let n = 0;
  const lines = [];
  for (const [i, d] of docs.entries()) {
    if (d.errors.length) { lines.push(`doc ${i}: YAML: ${d.errors[0].message}`); continue; }
    const doc = d.toJS();
    if (doc == null) continue;
    n++;
    const what = `doc ${i} ${doc.kind}/${doc.metadata?.name}`;
    if (!doc.apiVersion || !doc.kind) { lines.push(`${what}: apiVersion and kind are required`); continue; }
    const problems = [...(await schemaErrors(doc)), ...unknownFields(doc), ...semantic(doc)];
    for (const p of problems) lines.push(`${what}: ${p}`);
  }
  if (lines.length) {
    bad++;
    for (const l of lines) console.log(`${file}: ${l}`);
  } else {
    console.log(`ok ${file}: ${n} objects`);
  }
}
process.exit(bad ? 1 : 0);
