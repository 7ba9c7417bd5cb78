// project.mjs -- what deploy/k8s must hold together beyond the API schemas
// (check.mjs): the promises of docs/operations.md for a pdserve cluster on
// Kubernetes. Prints one TAP line per rule ("ok - ..." / "not ok - ... # why").
//
//   node tests/deploy/k8s-check/project.mjs DIR CONFIG_OUT
//
// CONFIG_OUT: where the ConfigMap's config.yaml is written, for the caller to
// load with the real parser (pd-router --config).
import { readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments, parse } from "yaml";

const [dir, configOut] = process.argv.slice(2);
const objs = [];
for (const f of readdirSync(dir).filter((f) => /\.ya?ml$/.test(f) && f !== "kustomization.yaml"))
  for (const d of parseAllDocuments(readFileSync(join(dir, f), "utf8"))) {
    const o = d.toJS();
    if (o) objs.push({ ...o, _file: f });
  }
const find = (kind, name) => objs.find((o) => o.kind === kind && o.metadata?.name === name);
let failed = 0;
const check = (name, fn) => {
  let why = "";
  try {
    why = fn();
  } catch (e) {
    why = e.message;
  }
  if (why) { failed++; console.log(`not ok - ${name} # ${why}`); } else console.log(`ok - ${name}`);
};

const cm = find("ConfigMap", "pdserve-config");
const cfg = cm ? parse(cm.data["config.yaml"]) : null;
if (cm) writeFileSync(configOut, cm.data["config.yaml"]);
const drainS = (cfg?.worker?.drain_timeout_ms ?? 30000) / 1000;
const router = find("Deployment", "pdserve-router");
const svc = find("Service", "pdserve-router");
const container = (d) => d?.spec.template.spec.containers[0];
const env = (c, n) => (c.env || []).find((e) => e.name === n);

check("the ConfigMap holds config.yaml; workers reach the router by its Service", () =>
  !cfg ? "no pdserve-config ConfigMap with config.yaml"
    : cfg.worker?.router !== `tcp://${svc?.metadata.name}:5556` ? `worker.router is ${cfg.worker?.router}` : "");

for (const role of ["prefill", "decode"]) {
  const d = find("Deployment", `pdserve-${role}`);
  const c = container(d);
  check(`${role}: a Deployment running \`pdserve ${role}\``, () =>
    !d ? "missing" : JSON.stringify(c.args) !== JSON.stringify([role]) ? `args ${JSON.stringify(c.args)}` : "");
  if (!d) continue;
  const ps = d.spec.template.spec;
  check(`${role}: preStop drains (pdserve drain) within a grace period longer than worker.drain_timeout_ms (${drainS} s)`, () =>
    JSON.stringify(c.lifecycle?.preStop?.exec?.command) !== '["pdserve","drain"]' ? "no preStop pdserve drain"
      : !(ps.terminationGracePeriodSeconds >= drainS + 10) ? `terminationGracePeriodSeconds ${ps.terminationGracePeriodSeconds} < ${drainS} + 10` : "");
  check(`${role}: startup, liveness (pdserve health) and readiness (pdserve ready) probes`, () =>
    c.startupProbe?.exec?.command?.join(" ") !== "pdserve health" ? "startupProbe"
      : c.livenessProbe?.exec?.command?.join(" ") !== "pdserve health" ? "livenessProbe"
      : c.readinessProbe?.exec?.command?.join(" ") !== "pdserve ready" ? "readinessProbe" : "");
  check(`${role}: CPU and memory requests`, () =>
    c.resources?.requests?.cpu && c.resources?.requests?.memory ? "" : JSON.stringify(c.resources));
  check(`${role}: a rolling update never takes a worker away before its replacement is ready`, () =>
    d.spec.strategy?.rollingUpdate?.maxUnavailable === 0 ? "" : JSON.stringify(d.spec.strategy));
}
check("decode: announces its pod IP as the KV address (PD_ADVERTISE from status.podIP)", () =>
  env(container(find("Deployment", "pdserve-decode")), "PD_ADVERTISE")?.valueFrom?.fieldRef?.fieldPath === "status.podIP" ? "" : "missing");

check("router: one replica replaced by Recreate, probes on the health file", () => {
  const c = container(router);
  return !router ? "missing" : router.spec.replicas !== 1 || router.spec.strategy?.type !== "Recreate" ? "replicas/strategy"
    : c.livenessProbe?.exec?.command?.join(" ") !== "pdserve health" ? "livenessProbe"
    : c.readinessProbe?.exec?.command?.join(" ") !== "pdserve ready" ? "readinessProbe" : "";
});
check("router Service selects the router pods and exposes 5555, 5556 and 8000 by port name", () => {
  if (!svc || !router) return "missing";
  const labels = router.spec.template.metadata.labels;
  for (const [k, v] of Object.entries(svc.spec.selector)) if (labels[k] !== v) return `selector ${k}`;
  const named = new Set(container(router).ports.map((p) => p.name));
  const ports = svc.spec.ports.map((p) => p.port).sort().join(",");
  if (ports !== "5555,5556,8000") return `ports ${ports}`;
  for (const p of svc.spec.ports) if (!named.has(p.targetPort)) return `targetPort ${p.targetPort}`;
  return "";
});

check("every pod loads its role's CURVE keys from the Secret (PD_CONFIG_EXTRA = a mounted key)", () => {
  const secret = find("Secret", "pdserve-keys");
  for (const role of ["router", "prefill", "decode"]) {
    const d = find("Deployment", `pdserve-${role}`);
    const c = container(d);
    const extra = env(c, "PD_CONFIG_EXTRA")?.value;
    const vol = d.spec.template.spec.volumes.find((v) => v.secret?.secretName === "pdserve-keys");
    const mount = c.volumeMounts.find((m) => m.name === vol?.name);
    const item = vol?.secret.items?.[0];
    if (!vol || !mount || !item) return `${role}: no Secret volume`;
    if (extra !== `${mount.mountPath}/${item.path}`) return `${role}: PD_CONFIG_EXTRA ${extra}`;
    if (!(secret?.stringData || secret?.data || {})[item.key]) return `${role}: the Secret has no ${item.key}`;
    if (!((vol.secret.defaultMode & 0o040) && d.spec.template.spec.securityContext?.fsGroup === 10001))
      return `${role}: the key file is not readable by the image's user (group 10001)`;
  }
  return "";
});
check("every pod runs as the image's non-root user with a read-only root and a /tmp for the health file", () => {
  for (const role of ["router", "prefill", "decode"]) {
    const d = find("Deployment", `pdserve-${role}`);
    const c = container(d);
    if (d.spec.template.spec.securityContext?.runAsUser !== 10001) return `${role}: runAsUser`;
    if (!c.securityContext?.readOnlyRootFilesystem) return `${role}: readOnlyRootFilesystem`;
    if (!c.volumeMounts.some((m) => m.mountPath === "/tmp")) return `${role}: no /tmp mount`;
  }
  return "";
});

check("HPAs scale the prefill and decode Deployments on metrics the adapter rules serve", () => {
  const adapter = find("ConfigMap", "prometheus-adapter-pdserve");
  const rules = adapter ? parse(adapter.data["config.yaml"]).rules : [];
  const served = new Set();
  for (const r of rules) {
    const series = r.seriesQuery.match(/^'?([a-z_:]+)\{/)?.[1] || r.seriesQuery.match(/^([a-z_:]+)\{/)?.[1];
    const as = r.name.as.replace("${1}", series?.replace(/^pdserve:/, "") ?? "");
    served.add(as);
  }
  for (const role of ["prefill", "decode"]) {
    const h = objs.find((o) => o.kind === "HorizontalPodAutoscaler" && o.spec.scaleTargetRef.name === `pdserve-${role}`);
    if (!h) return `no HPA for pdserve-${role}`;
    for (const m of h.spec.metrics) {
      if (m.type !== "Object") return `${role}: metric type ${m.type}`;
      if (m.object.describedObject.name !== svc.metadata.name) return `${role}: described object ${m.object.describedObject.name}`;
      if (!served.has(m.object.metric.name)) return `${role}: ${m.object.metric.name} is not served by the adapter rules (${[...served]})`;
    }
  }
  return "";
});
check("the adapter rules read series the router exports (docs/api.md)", () => {
  const api = readFileSync("docs/api.md", "utf8");
  const adapter = find("ConfigMap", "prometheus-adapter-pdserve");
  for (const r of parse(adapter.data["config.yaml"]).rules) {
    const series = r.seriesQuery.match(/^([a-z_:]+)\{/)?.[1];
    if (!series || !api.includes("`" + series + "`")) return `${series} is not a documented router metric`;
  }
  return "";
});
check("kustomization.yaml lists every manifest but the placeholder Secret and the adapter's rules", () => {
  const k = parse(readFileSync(join(dir, "kustomization.yaml"), "utf8"));
  const want = readdirSync(dir).filter((f) => /\.yaml$/.test(f) &&
    !["kustomization.yaml", "secret.yaml", "prometheus-adapter.yaml"].includes(f)).sort();
  const got = [...k.resources].sort();
  for (const f of got) if (!existsSync(join(dir, f))) return `${f} does not exist`;
  return JSON.stringify(got) === JSON.stringify(want) ? "" : `resources ${got} != ${want}`;
});
process.exit(failed ? 1 : 0);
