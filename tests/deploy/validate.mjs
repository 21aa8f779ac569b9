// Offline checks of raptr's deployment files (run by tests/deploy/deploy_test.sh).
//
//   node validate.mjs k8s OVERLAY RENDERED.yaml HELP_DIR [SECRETS.yaml]
//     every object validates against the Kubernetes API schema (kubernetes-models, and
//     @kubernetes-models/prometheus-operator for ServiceMonitor/PodMonitor); container args only
//     use flags that the binary's --help lists; ports, probes, Services, monitors, ConfigMap
//     references and volumes agree with each other and with the --listen/--metrics-listen args;
//     TLS and auth: the required file flags (TLS_FILES) name files on read-only, non-optional
//     Secret volumes with the expected Secret and key, --data-root lies on the shared claim, no
//     --reflection; the NetworkPolicies admit exactly the intended peers (INTENDED_PEERS) to
//     each raptr port. SECRETS.yaml (deploy/k8s/make-secrets.sh's output): the Secrets the pods
//     mount, whose keys, certificates (chain, names, SPIFFE ids, key pairs) and token files are
//     checked against what the pods use.
//   node validate.mjs docker DOCKERFILE HELP_DIR [RUNTIME_PACKAGES_FILE]
//     FROM ... AS build, RUN scripts/install-deps.sh, RUN scripts/build.sh, a non-root USER,
//     ENTRYPOINT/CMD flags in --help, EXPOSEd ports = listen ports, runtime packages (from ldd).
//
// HELP_DIR holds raptr-coordinator.help and raptr-worker.help (`raptr-worker serve --help`).
// Prints one line per problem and exits 1 if there is any.
import fs from "node:fs";
import path from "node:path";
import { X509Certificate, createPrivateKey } from "node:crypto";
import YAML from "yaml";

const problems = [];
const fail = (msg) => problems.push(msg);

function readHelp(dir, binary) {
  const file = path.join(dir, `${binary}.help`);
  if (!fs.existsSync(file)) throw new Error(`missing ${file}`);
  const flags = new Set();
  // "  --name  help" and, for a boolean, "  --[no-]name  help" (both --name and --no-name).
  for (const m of fs.readFileSync(file, "utf8").matchAll(/^\s+--(\[no-\])?([A-Za-z0-9][A-Za-z0-9-]*)\b/gm)) {
    flags.add(`--${m[2]}`);
    if (m[1]) flags.add(`--no-${m[2]}`);
  }
  return flags;
}

function checkFlags(where, binary, args, helpDir) {
  const flags = readHelp(helpDir, binary);
  for (const arg of args) {
    if (!arg.startsWith("--")) continue;
    const flag = arg.split("=")[0];
    if (!flags.has(flag)) {
      fail(`${where}: flag ${flag} is not accepted by ${binary} (not in its --help)`);
    }
  }
}

function flagValue(args, flag) {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag && i + 1 < args.length) return args[i + 1];
    if (args[i].startsWith(flag + "=")) return args[i].slice(flag.length + 1);
  }
  return undefined;
}

function flagValues(args, flag) {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag && i + 1 < args.length) out.push(args[i + 1]);
    else if (args[i].startsWith(flag + "=")) out.push(args[i].slice(flag.length + 1));
  }
  return out;
}

function portOf(hostPort) {
  const m = /:(\d+)$/.exec(hostPort ?? "");
  return m ? Number(m[1]) : undefined;
}

// A GPU worker runs `serve --backend=cuda --device=N` (one GPU per process, the device plugin's
// one GPU is device 0 in its container); a CPU worker neither (--backend defaults to cpu, and
// --device needs --backend=cuda).
function checkWorkerBackend(where, args, gpu) {
  const backend = flagValue(args, "--backend");
  const device = flagValue(args, "--device");
  if (gpu) {
    if (backend !== "cuda") fail(`${where}: a GPU worker needs --backend=cuda (has ${backend ?? "none: cpu"})`);
    if (device === undefined || !/^\d+$/.test(device)) fail(`${where}: a GPU worker needs --device=<ordinal> (has ${device})`);
    else if (Number(device) !== 0) fail(`${where}: --device=${device}: with one GPU per worker it is device 0`);
  } else {
    if (backend !== undefined && backend !== "cpu") fail(`${where}: a CPU worker runs --backend=${backend}`);
    if (device !== undefined) fail(`${where}: a CPU worker sets --device=${device}`);
  }
}

// ---------------------------------------------------------------------------------------------
// TLS and auth: the contract between the pod specs, the binaries' flags and the Secrets that
// deploy/README.md (and deploy/k8s/make-secrets.sh) create out of band.

// flag -> [Secret, key]: every container of the role must pass the flag, naming a file that a
// read-only volumeMount of that Secret volume projects from that key.
const TLS_FILES = {
  coordinator: {
    "--tls-cert": ["raptr-coordinator-tls", "tls.crt"],
    "--tls-key": ["raptr-coordinator-tls", "tls.key"],
    "--tls-client-ca": ["raptr-coordinator-tls", "ca.crt"],
    "--auth-tokens": ["raptr-auth", "tokens"],
    "--metrics-token-file": ["raptr-auth", "metrics-token"],
  },
  worker: {
    "--tls-ca": ["raptr-worker-tls", "ca.crt"],
    "--tls-cert": ["raptr-worker-tls", "tls.crt"],
    "--tls-key": ["raptr-worker-tls", "tls.key"],
    "--metrics-token-file": ["raptr-auth", "metrics-token"],
  },
};
// Checked the same way when present.
const OPTIONAL_FILES = { worker: { "--join-token-file": ["raptr-auth", "join-token"] } };
// Never in a manifest: reflection lets anyone who reaches 50051 list the API.
const FORBIDDEN_FLAGS = { coordinator: ["--reflection"], worker: [] };

// The peers the NetworkPolicies are meant for (deploy/README.md, "TLS, tokens and network policies").
const PROMETHEUS_NS_LABEL = ["raptr.io/monitoring", "true"];
const PROMETHEUS_POD_LABEL = ["app.kubernetes.io/name", "prometheus"];
const OPERATOR_LABEL = ["raptr.io/operator", "true"];

// A Secret volume's file: the Secret and key behind PATH, or a reason it is none.
function secretFileOf(spec, c, file) {
  const m = (c.volumeMounts ?? [])
    .filter((vm) => file === vm.mountPath || file.startsWith(vm.mountPath.replace(/\/$/, "") + "/"))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  if (!m) return { error: `${file} is on no volumeMount` };
  const v = (spec.volumes ?? []).find((vol) => vol.name === m.name);
  if (!v) return { error: `${file}: volumeMount ${m.name} has no volume` };
  let rel = file === m.mountPath ? "" : file.slice(m.mountPath.replace(/\/$/, "").length + 1);
  if (m.subPath) rel = rel ? `${m.subPath}/${rel}` : m.subPath;
  const problems = [];
  if (m.readOnly !== true) problems.push(`volumeMount ${m.name} at ${m.mountPath} is not readOnly`);
  if (!v.secret) return { error: `${file}: volume ${m.name} is not a Secret volume`, problems };
  if (v.secret.optional) problems.push(`Secret volume ${m.name} is optional (a missing Secret must stop the pod)`);
  let key = rel;
  let mode = v.secret.defaultMode ?? 0o644;
  if (v.secret.items) {
    const item = v.secret.items.find((i) => i.path === rel);
    if (!item) return { error: `${file}: Secret volume ${m.name} projects no item at ${rel}`, problems };
    key = item.key;
    mode = item.mode ?? mode;
  }
  if ((mode & 0o227) !== 0) {
    problems.push(`${file} has mode 0${mode.toString(8)} (want no write bits and nothing for others, e.g. 0440)`);
  }
  return { secret: v.secret.secretName, key, mountPath: m.mountPath, problems };
}

function secretValue(s, key) {
  if (s?.stringData && key in s.stringData) return Buffer.from(String(s.stringData[key]));
  if (s?.data && key in s.data) return Buffer.from(String(s.data[key] ?? ""), "base64");
  return undefined;
}

function selectorMatches(sel, labels) {
  if (!sel) return true;
  labels = labels ?? {};
  if (!Object.entries(sel.matchLabels ?? {}).every(([k, v]) => labels[k] === v)) return false;
  return (sel.matchExpressions ?? []).every(({ key, operator, values }) => {
    const has = key in labels;
    if (operator === "In") return has && values.includes(labels[key]);
    if (operator === "NotIn") return !has || !values.includes(labels[key]);
    if (operator === "Exists") return has;
    if (operator === "DoesNotExist") return !has;
    return false;
  });
}

function ipv4InCidr(ip, cidr) {
  const [net, bits] = cidr.split("/");
  const n = (a) => a.split(".").reduce((x, o) => (x << 8) + Number(o), 0) >>> 0;
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(net ?? "")) return false;
  const mask = Number(bits) === 0 ? 0 : (~0 << (32 - Number(bits))) >>> 0;
  return (n(ip) & mask) === (n(net) & mask);
}

// Does the NetworkPolicy peer admit the sample source?
function peerAdmits(peer, src, ns) {
  if (peer.ipBlock) {
    if (!src.ip || !ipv4InCidr(src.ip, peer.ipBlock.cidr)) return false;
    return !(peer.ipBlock.except ?? []).some((e) => ipv4InCidr(src.ip, e));
  }
  if (!src.pod) return false; // selectors select pods only
  const nsOk = peer.namespaceSelector
    ? selectorMatches(peer.namespaceSelector, src.ns)
    : src.ns["kubernetes.io/metadata.name"] === ns;
  return nsOk && selectorMatches(peer.podSelector, src.pod);
}

function rulePortMatches(rule, port, namedPorts) {
  if (!rule.ports?.length) return true;
  return rule.ports.some((p) => {
    if ((p.protocol ?? "TCP") !== "TCP") return false;
    if (p.port === undefined) return true;
    const num = typeof p.port === "string" ? namedPorts.get(p.port) : p.port;
    return p.endPort ? port >= num && port <= p.endPort : port === num;
  });
}

// Which of the sample sources may open a TCP connection to PORT of the pod (labels, ns)?
function admitted(policies, ns, podLabels, port, namedPorts, sources) {
  const isolating = policies.filter(
    (np) =>
      (np.metadata.namespace ?? ns) === ns &&
      selectorMatches(np.spec.podSelector, podLabels) &&
      (np.spec.policyTypes ?? ["Ingress"]).includes("Ingress"),
  );
  if (isolating.length === 0) return new Set(sources.map((s) => s.name)); // not isolated
  const ok = new Set();
  for (const src of sources) {
    for (const np of isolating) {
      for (const rule of np.spec.ingress ?? []) {
        if (!rulePortMatches(rule, port, namedPorts)) continue;
        if (!rule.from?.length || rule.from.some((peer) => peerAdmits(peer, src, ns))) ok.add(src.name);
      }
    }
  }
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

async function modelClass(apiVersion, kind) {
  const pkg =
    apiVersion.startsWith("monitoring.coreos.com/")
      ? `@kubernetes-models/prometheus-operator/${apiVersion}`
      : `kubernetes-models/${apiVersion}`;
  try {
    const mod = await import(pkg);
    return mod[kind];
  } catch {
    return undefined;
  }
}

function matches(selector, labels) {
  return Object.entries(selector ?? {}).every(([k, v]) => (labels ?? {})[k] === v);
}

async function checkK8s(overlay, renderedFile, helpDir, secretsFile) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(renderedFile, "utf8"))
    .map((d) => d.toJS())
    .filter((d) => d);
  if (docs.length === 0) fail(`${overlay}: rendered nothing`);
  const byKind = (k) => docs.filter((d) => d.kind === k);
  const id = (o) => `${overlay}: ${o.kind}/${o.metadata?.name}`;

  // (b) schema
  for (const obj of docs) {
    if (!obj.apiVersion || !obj.kind) {
      fail(`${overlay}: object without apiVersion/kind: ${JSON.stringify(obj).slice(0, 120)}`);
      continue;
    }
    const Cls = await modelClass(obj.apiVersion, obj.kind);
    if (!Cls) {
      fail(`${id(obj)}: no schema for ${obj.apiVersion} ${obj.kind} in kubernetes-models`);
      continue;
    }
    try {
      new Cls(obj).validate();
    } catch (e) {
      fail(`${id(obj)}: schema: ${e.message}`);
    }
  }

  const configMaps = new Map(byKind("ConfigMap").map((c) => [c.metadata.name, c]));
  const secrets = new Map(byKind("Secret").map((s) => [s.metadata.name, s]));
  // The TLS/auth Secrets are created out of band; an overlay that renders one with an empty
  // value would overwrite the real one at every `kubectl apply -k`.
  const contractSecrets = new Set(Object.values({ ...TLS_FILES, ...OPTIONAL_FILES }).flatMap((f) => Object.values(f).map(([n]) => n)));
  for (const sec of secrets.values()) {
    if (!contractSecrets.has(sec.metadata.name)) continue;
    for (const k of new Set([...Object.keys(sec.data ?? {}), ...Object.keys(sec.stringData ?? {})])) {
      if (!secretValue(sec, k)?.length) fail(`${id(sec)}: renders key ${k} empty (a placeholder would overwrite the real Secret at every apply)`);
    }
  }
  // make-secrets.sh's output: the Secrets as the pods will find them.
  const generated = new Map();
  if (secretsFile) {
    for (const sec of YAML.parseAllDocuments(fs.readFileSync(secretsFile, "utf8")).map((d) => d.toJS()).filter((d) => d)) {
      if (sec.metadata?.creationTimestamp === null) delete sec.metadata.creationTimestamp;
      const Cls = await modelClass(sec.apiVersion, sec.kind);
      try {
        new Cls(sec).validate();
      } catch (e) {
        fail(`${overlay}: ${secretsFile}: Secret/${sec.metadata?.name}: schema: ${e.message}`);
      }
      const ns = docs.find((d) => d.kind === "Deployment")?.metadata.namespace;
      if (sec.metadata?.namespace !== ns) fail(`${overlay}: generated Secret/${sec.metadata?.name} is in namespace ${sec.metadata?.namespace}, the pods in ${ns}`);
      generated.set(sec.metadata.name, sec);
    }
  }
  const services = byKind("Service");
  const pvcs = new Set(byKind("PersistentVolumeClaim").map((p) => p.metadata.name));
  const workloads = [...byKind("Deployment"), ...byKind("StatefulSet")];
  for (const kind of ["Deployment", "StatefulSet", "Service", "ConfigMap", "PersistentVolumeClaim", "Secret"]) {
    if (byKind(kind).length === 0) fail(`${overlay}: no ${kind} rendered`);
  }

  // (c) containers: flags, $(VAR) references, ports, probes, volumes
  const mounts = {}; // role -> {mountPath: claim}
  const files = {}; // role -> Map(flag -> {secret, key, path}), the Secret files each role reads
  const pods = {}; // role -> {workload, container, labels, ports: Map(name -> port), env}
  for (const w of workloads) {
    const spec = w.spec.template.spec;
    if (!matches(w.spec.selector?.matchLabels, w.spec.template.metadata?.labels)) {
      fail(`${id(w)}: selector does not match the pod template's labels`);
    }
    for (const v of spec.volumes ?? []) {
      const claim = v.persistentVolumeClaim?.claimName;
      if (claim && !pvcs.has(claim)) fail(`${id(w)}: volume ${v.name} uses missing PVC ${claim}`);
    }
    for (const c of spec.containers) {
      const where = `${id(w)} container ${c.name}`;
      const role = c.name.includes("coordinator") ? "coordinator" : c.name.includes("worker") ? "worker" : undefined;
      if (!role) {
        fail(`${where}: cannot tell which binary runs (container name has neither coordinator nor worker)`);
        continue;
      }
      const binary = role === "coordinator" ? "raptr-coordinator" : "raptr-worker";
      if (c.command) fail(`${where}: sets command; the image ENTRYPOINT (${binary}) is expected`);
      const args = c.args ?? [];
      checkFlags(where, binary, args, helpDir);

      // env, with ConfigMap/Secret references resolved
      const env = new Map();
      for (const e of c.env ?? []) {
        if (e.value !== undefined) env.set(e.name, e.value);
        else if (e.valueFrom?.configMapKeyRef) {
          const { name, key } = e.valueFrom.configMapKeyRef;
          const cm = configMaps.get(name);
          if (!cm) fail(`${where}: env ${e.name} refers to missing ConfigMap ${name}`);
          else if (!(key in (cm.data ?? {}))) fail(`${where}: env ${e.name}: ConfigMap ${name} has no key ${key}`);
          else env.set(e.name, cm.data[key]);
        } else if (e.valueFrom?.secretKeyRef) {
          const { name, key, optional } = e.valueFrom.secretKeyRef;
          const s = secrets.get(name);
          if (!optional && !(s && key in { ...(s.data ?? {}), ...(s.stringData ?? {}) })) {
            fail(`${where}: env ${e.name} refers to missing Secret key ${name}/${key}`);
          }
          env.set(e.name, "<secret>");
        } else if (e.valueFrom?.fieldRef) {
          env.set(e.name, `<${e.valueFrom.fieldRef.fieldPath}>`);
        } else fail(`${where}: env ${e.name} has neither value nor a known valueFrom`);
      }
      const resolved = args.map((a) =>
        a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => {
          if (!env.has(v)) fail(`${where}: arg ${a} uses $(${v}), which is not in the container's env`);
          return env.get(v) ?? m;
        }),
      );

      const ports = new Map((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      const expected = new Map();
      const listen = flagValue(resolved, "--listen");
      if (role === "coordinator") {
        if (!listen) fail(`${where}: no --listen (the default 127.0.0.1:50051 is unreachable from other pods)`);
        else expected.set("grpc", portOf(listen));
        if (listen && !listen.startsWith("0.0.0.0:")) fail(`${where}: --listen=${listen} is not 0.0.0.0`);
      }
      const metrics = flagValue(resolved, "--metrics-listen");
      if (!metrics) fail(`${where}: no --metrics-listen (the default binds 127.0.0.1, unscrapable)`);
      else {
        expected.set("metrics", portOf(metrics));
        if (!metrics.startsWith("0.0.0.0:")) fail(`${where}: --metrics-listen=${metrics} is not 0.0.0.0`);
      }
      for (const [name, port] of expected) {
        if (ports.get(name) !== port) {
          fail(`${where}: containerPort "${name}" is ${ports.get(name)} but the args listen on ${port}`);
        }
      }
      for (const [name, port] of ports) {
        if (!expected.has(name)) fail(`${where}: containerPort ${name}=${port} is not opened by any --*listen arg`);
      }
      for (const probeName of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const probe = c[probeName];
        if (!probe) {
          if (probeName !== "startupProbe") fail(`${where}: no ${probeName}`);
          continue;
        }
        if (probe.grpc && flagValue(resolved, "--tls-cert") !== undefined && role === "coordinator") {
          fail(`${where}: ${probeName} is a gRPC probe, but 50051 speaks TLS (--tls-cert) and kubelet's gRPC probe cannot; use httpGet /healthz on the metrics port`);
        }
        if (probe.grpc) {
          if (probe.grpc.port !== expected.get("grpc")) {
            fail(`${where}: ${probeName} grpc port ${probe.grpc.port} is not the --listen port ${expected.get("grpc")}`);
          }
        } else if (probe.httpGet) {
          const p = probe.httpGet.port;
          const num = typeof p === "string" ? ports.get(p) : p;
          if (num === undefined || num !== expected.get("metrics")) {
            fail(`${where}: ${probeName} httpGet port ${p} is not the --metrics-listen port`);
          }
        } else if (!probe.exec) fail(`${where}: ${probeName} is neither grpc, httpGet nor exec`);
      }
      if (!c.resources?.requests?.cpu || !c.resources?.requests?.memory) {
        fail(`${where}: no cpu/memory resource requests`);
      }
      const ann = w.spec.template.metadata?.annotations ?? {};
      if (ann["prometheus.io/scrape"] !== "true" || Number(ann["prometheus.io/port"]) !== expected.get("metrics")) {
        fail(`${id(w)}: pod annotations prometheus.io/scrape=true, prometheus.io/port=<metrics port> missing or wrong`);
      }

      if (role === "worker") {
        const coord = env.get("RAPTR_COORDINATOR");
        if (!coord) fail(`${where}: RAPTR_COORDINATOR is not set`);
        else {
          const [host, port] = coord.split(":");
          const svc = services.find((s) => s.metadata.name === host);
          if (!svc) fail(`${where}: RAPTR_COORDINATOR=${coord}: no Service ${host}`);
          else if (!svc.spec.ports.some((p) => p.port === Number(port))) {
            fail(`${where}: RAPTR_COORDINATOR=${coord}: Service ${host} has no port ${port}`);
          }
        }
        const idArg = args.find((a) => a.startsWith("--id"));
        const idVar = /\$\((\w+)\)/.exec(idArg ?? "")?.[1];
        if (env.get(idVar) !== "<metadata.name>") fail(`${where}: --id does not come from metadata.name`);
        const hostVar = /\$\((\w+)\)/.exec(args.find((a) => a.startsWith("--host")) ?? "")?.[1];
        if (env.get(hostVar) !== "<status.podIP>") fail(`${where}: --host does not come from status.podIP`);
      }

      const volClaims = new Map(
        (spec.volumes ?? []).map((v) => [v.name, v.persistentVolumeClaim?.claimName ?? `<${v.name}>`]),
      );
      mounts[role] = new Map((c.volumeMounts ?? []).map((m) => [m.mountPath, volClaims.get(m.name)]));
      mounts[`${role}:args`] = resolved;
      pods[role] = { workload: w, container: c, labels: w.spec.template.metadata?.labels ?? {}, ports, env, args: resolved };

      // TLS and auth: the file flags name files of the right Secret keys on read-only mounts.
      for (const flag of FORBIDDEN_FLAGS[role]) {
        if (resolved.some((a) => a === flag || a.startsWith(flag + "="))) fail(`${where}: passes ${flag} (keep it off in deployments)`);
      }
      files[role] = new Map();
      for (const [flag, [secretName, key]] of [...Object.entries(TLS_FILES[role]), ...Object.entries(OPTIONAL_FILES[role] ?? {})]) {
        const values = flagValues(resolved, flag);
        if (values.length === 0) {
          if (flag in TLS_FILES[role]) fail(`${where}: no ${flag} (want the ${secretName} Secret's ${key})`);
          continue;
        }
        if (values.length > 1) fail(`${where}: ${flag} given ${values.length} times`);
        const f = secretFileOf(spec, c, values[0]);
        for (const p of f.problems ?? []) fail(`${where}: ${flag}=${values[0]}: ${p}`);
        if (f.error) {
          fail(`${where}: ${flag}=${values[0]}: ${f.error}`);
          continue;
        }
        if (f.secret !== secretName || f.key !== key) {
          fail(`${where}: ${flag}=${values[0]} is Secret ${f.secret} key ${f.key}, want Secret ${secretName} key ${key}`);
        }
        files[role].set(flag, { ...f, path: values[0] });
        const sec = generated.get(f.secret) ?? secrets.get(f.secret);
        if (secretsFile && !sec) fail(`${where}: ${flag}: Secret ${f.secret} is neither rendered nor made by make-secrets.sh`);
        else if (sec && !secretValue(sec, f.key)?.length) fail(`${where}: ${flag}: Secret ${f.secret} has no (or an empty) key ${f.key}`);
      }
      const dataRoots = flagValues(resolved, "--data-root");
      if (dataRoots.length === 0) fail(`${where}: no --data-root (job data paths would not be confined)`);
      mounts[`${role}:data-roots`] = dataRoots;
    }
  }

  // Paths: the store on a PVC; the checkpoint dir on a claim the workers mount at the same path.
  const cArgs = mounts["coordinator:args"] ?? [];
  const under = (p, m) => [...(m ?? new Map())].find(([mp]) => p === mp || p.startsWith(mp.replace(/\/$/, "") + "/"));
  const store = flagValue(cArgs, "--store");
  const storeMount = store && under(store, mounts.coordinator);
  if (!storeMount || storeMount[1].startsWith("<")) fail(`${overlay}: coordinator --store=${store} is not on a PersistentVolumeClaim`);
  const ckpt = flagValue(cArgs, "--checkpoint-dir");
  const ckptMount = ckpt && under(ckpt, mounts.coordinator);
  const wMount = ckptMount && (mounts.worker ?? new Map()).get(ckptMount[0]);
  if (!ckptMount || ckptMount[1].startsWith("<") || wMount !== ckptMount[1]) {
    fail(`${overlay}: coordinator --checkpoint-dir=${ckpt} is not on a claim the workers mount at the same path`);
  }

  // --data-root: on the shared claim, the same roots (at the same paths) for the coordinator and
  // the workers, so a path the coordinator accepts is one every worker can open.
  for (const role of ["coordinator", "worker"]) {
    for (const root of mounts[`${role}:data-roots`] ?? []) {
      const m = under(root, mounts[role]);
      if (!m || m[1].startsWith("<")) fail(`${overlay}: ${role} --data-root=${root} is not on a PersistentVolumeClaim`);
      else if ((mounts[role === "worker" ? "coordinator" : "worker"] ?? new Map()).get(m[0]) !== m[1]) {
        fail(`${overlay}: ${role} --data-root=${root}: the other role does not mount claim ${m[1]} at ${m[0]}`);
      }
    }
  }
  const rootsOf = (role) => JSON.stringify([...(mounts[`${role}:data-roots`] ?? [])].sort());
  if (rootsOf("coordinator") !== rootsOf("worker")) {
    fail(`${overlay}: --data-root differs: coordinator ${rootsOf("coordinator")}, workers ${rootsOf("worker")}`);
  }

  // NetworkPolicies: for each raptr pod and port, the sample sources admitted must be exactly the
  // intended peers (a rule without `from` admits everyone; a pod no policy isolates, too).
  const policies = byKind("NetworkPolicy");
  for (const np of policies) {
    for (const [i, rule] of (np.spec.ingress ?? []).entries()) {
      if (!rule.from?.length) fail(`${id(np)}: ingress rule ${i} has no \`from\`: it admits every source`);
    }
  }
  for (const np of policies) {
    const types = np.spec.policyTypes ?? (np.spec.egress ? ["Ingress", "Egress"] : ["Ingress"]);
    if (types.includes("Egress") && workloads.some((w) => selectorMatches(np.spec.podSelector, w.spec.template.metadata?.labels))) {
      fail(`${id(np)}: restricts egress of raptr pods, which this test does not evaluate: extend it (DNS, workers to coordinator 50051, workers to workers on all TCP ports)`);
    }
  }
  if (pods.coordinator && pods.worker) {
    const ns = pods.coordinator.workload.metadata.namespace;
    const here = { "kubernetes.io/metadata.name": ns };
    const monitoringNs = { "kubernetes.io/metadata.name": "monitoring", [PROMETHEUS_NS_LABEL[0]]: PROMETHEUS_NS_LABEL[1] };
    const elsewhere = { "kubernetes.io/metadata.name": "default" };
    const prometheusPod = { [PROMETHEUS_POD_LABEL[0]]: PROMETHEUS_POD_LABEL[1], "app.kubernetes.io/instance": "k8s" };
    const sources = [
      { name: "worker", ns: here, pod: pods.worker.labels },
      { name: "coordinator", ns: here, pod: pods.coordinator.labels },
      { name: "prometheus", ns: monitoringNs, pod: prometheusPod },
      { name: "other pod in the monitoring namespace", ns: monitoringNs, pod: { "app.kubernetes.io/name": "grafana" } },
      { name: "prometheus in an unlabelled namespace", ns: elsewhere, pod: prometheusPod },
      { name: "operator namespace", ns: { "kubernetes.io/metadata.name": "ops", [OPERATOR_LABEL[0]]: OPERATOR_LABEL[1] }, pod: { app: "raptrctl" } },
      { name: "operator pod", ns: here, pod: { [OPERATOR_LABEL[0]]: OPERATOR_LABEL[1] } },
      { name: "other pod in this namespace", ns: here, pod: { app: "other" } },
      { name: "worker-labelled pod in another namespace", ns: elsewhere, pod: pods.worker.labels },
      { name: "pod in another namespace", ns: elsewhere, pod: { app: "other" } },
      { name: "address outside the cluster", ip: "203.0.113.7" },
    ];
    const grpcPort = pods.coordinator.ports.get("grpc");
    const cMetrics = pods.coordinator.ports.get("metrics");
    const wMetrics = pods.worker.ports.get("metrics");
    const glooPort = 40000; // an ephemeral port: Gloo pairs listen on whatever the kernel picks
    const INTENDED_PEERS = [
      ["coordinator", grpcPort, "gRPC", ["worker", "operator namespace", "operator pod"]],
      ["coordinator", cMetrics, "metrics", ["prometheus"]],
      ["coordinator", glooPort, "an unused port", []],
      ["worker", wMetrics, "metrics", ["prometheus", "worker"]],
      ["worker", glooPort, "Gloo (ephemeral)", ["worker"]],
    ];
    for (const [role, port, what, want] of INTENDED_PEERS) {
      const got = admitted(policies, ns, pods[role].labels, port, pods[role].ports, sources);
      for (const src of want) if (!got.has(src)) fail(`${overlay}: NetworkPolicy: ${src} cannot reach the ${role}'s ${port} (${what}), and must`);
      for (const src of got) if (!want.includes(src)) fail(`${overlay}: NetworkPolicy: ${src} can reach the ${role}'s ${port} (${what}); only ${want.join(", ") || "nobody"} should`);
    }
  }

  // Monitors send the bearer token the scraped pods require (the same Secret key they mount).
  const tokenOf = (role) => files[role]?.get("--metrics-token-file");
  for (const [mon, eps, role] of [
    ...byKind("ServiceMonitor").map((m) => [m, m.spec.endpoints ?? [], "coordinator"]),
    ...byKind("PodMonitor").map((m) => [m, m.spec.podMetricsEndpoints ?? [], "worker"]),
  ]) {
    const t = tokenOf(role);
    if (!t) continue;
    for (const ep of eps) {
      const cred = ep.authorization?.credentials ?? ep.bearerTokenSecret;
      if (cred?.name !== t.secret || cred?.key !== t.key) {
        fail(`${id(mon)}: endpoint ${ep.port} does not send the metrics token (authorization.credentials ${t.secret}/${t.key})`);
      }
    }
  }

  // The generated Secrets: certificates and tokens fit what the pods do with them.
  if (secretsFile && files.coordinator && files.worker) checkPki(overlay, pods, files, generated);

  // Services select pods and name their ports.
  for (const s of services) {
    const pods = workloads.filter((w) => matches(s.spec.selector, w.spec.template.metadata?.labels));
    if (pods.length === 0) {
      fail(`${id(s)}: selects no pod template`);
      continue;
    }
    if (pods.length > 1) fail(`${id(s)}: selects several workloads: ${pods.map((w) => w.metadata.name).join(", ")}`);
    const names = new Set(pods.flatMap((w) => w.spec.template.spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name))));
    for (const p of s.spec.ports) {
      if (typeof p.targetPort === "string" && !names.has(p.targetPort)) fail(`${id(s)}: targetPort ${p.targetPort} is no container port`);
    }
  }
  for (const sts of byKind("StatefulSet")) {
    const svc = services.find((s) => s.metadata.name === sts.spec.serviceName);
    if (!svc || svc.spec.clusterIP !== "None") fail(`${id(sts)}: serviceName ${sts.spec.serviceName} is not a headless Service`);
  }
  const coordDeploy = byKind("Deployment").find((d) => d.metadata.name === "raptr-coordinator");
  if (!coordDeploy) fail(`${overlay}: no Deployment raptr-coordinator`);
  else {
    if (coordDeploy.spec.replicas !== 1) fail(`${id(coordDeploy)}: replicas must be 1 (SQLite has one writer)`);
    if (coordDeploy.spec.strategy?.type !== "Recreate") fail(`${id(coordDeploy)}: strategy must be Recreate (SQLite has one writer)`);
  }
  for (const sm of byKind("ServiceMonitor")) {
    const svc = services.filter((s) => matches(sm.spec.selector?.matchLabels, s.metadata.labels));
    if (svc.length === 0) fail(`${id(sm)}: selects no Service`);
    for (const ep of sm.spec.endpoints ?? []) {
      if (!svc.some((s) => s.spec.ports.some((p) => p.name === ep.port))) fail(`${id(sm)}: no selected Service has port ${ep.port}`);
    }
  }
  for (const pm of byKind("PodMonitor")) {
    const pods = workloads.filter((w) => matches(pm.spec.selector?.matchLabels, w.spec.template.metadata?.labels));
    if (pods.length === 0) fail(`${id(pm)}: selects no pod template`);
    for (const ep of pm.spec.podMetricsEndpoints ?? []) {
      const ok = pods.some((w) => w.spec.template.spec.containers.some((c) => (c.ports ?? []).some((p) => p.name === ep.port)));
      if (!ok) fail(`${id(pm)}: no selected pod has port ${ep.port}`);
    }
  }

  // Overlay intent.
  const workers = byKind("StatefulSet").find((s) => s.metadata.name === "raptr-worker");
  if (workers) {
    const wc = workers.spec.template.spec.containers[0];
    const gpus = wc.resources?.limits?.["nvidia.com/gpu"];
    checkWorkerBackend(id(workers), wc.args ?? [], overlay.includes("gpu"));
    if (overlay.includes("gpu")) {
      if (!/cuda/.test(wc.image)) fail(`${id(workers)}: image ${wc.image} is not the CUDA worker`);
      if (Number(gpus) !== 1) fail(`${id(workers)}: each worker should have nvidia.com/gpu: 1 (has ${gpus})`);
      if (!workers.spec.template.spec.tolerations?.length) fail(`${id(workers)}: no GPU tolerations`);
    } else {
      if (!/cpu/.test(wc.image)) fail(`${id(workers)}: image ${wc.image} is not the CPU worker`);
      if (gpus !== undefined) fail(`${id(workers)}: CPU workers request GPUs`);
    }
  }
  for (const w of workloads) {
    for (const c of w.spec.template.spec.containers) {
      if (!c.image.includes("/") && !c.image.includes(":")) fail(`${id(w)}: image ${c.image} was not mapped by the overlay`);
    }
  }
  const shared = byKind("PersistentVolumeClaim").find((p) => p.metadata.name === "raptr-shared");
  if (overlay.includes("prod") && !shared?.spec.accessModes.includes("ReadWriteMany")) {
    fail(`${overlay}: the shared volume must be ReadWriteMany across nodes`);
  }
  console.log(`${overlay}: ${docs.length} objects: ${docs.map((d) => d.kind).join(", ")}`);
}

// Certificates: the coordinator's chains to the workers' --tls-ca and names the host they dial
// (and 127.0.0.1, raptrctl in its pod); the workers' chains to the coordinator's --tls-client-ca
// and its SPIFFE URI authorizes every StatefulSet pod id; keys match; token files parse.
function checkPki(overlay, pods, files, generated) {
  // A missing or misplaced file flag is reported already; the rest needs them all.
  for (const role of ["coordinator", "worker"]) {
    if (Object.keys(TLS_FILES[role]).some((flag) => !files[role].has(flag))) return;
  }
  const read = (role, flag) => {
    const f = files[role].get(flag);
    return f && secretValue(generated.get(f.secret), f.key);
  };
  const certs = (pem) => (pem?.toString().match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []).map((p) => new X509Certificate(p));
  const chainsTo = (leaf, bundle) => bundle.some((ca) => ca.ca && leaf.checkIssued(ca) && leaf.verify(ca.publicKey));
  const keyMatches = (cert, pem) => {
    try {
      return cert.checkPrivateKey(createPrivateKey(pem));
    } catch {
      return false;
    }
  };
  const EKU = { server: "1.3.6.1.5.5.7.3.1", client: "1.3.6.1.5.5.7.3.2" };
  const where = (role, flag) => `${overlay}: ${role} ${flag} (${files[role].get(flag)?.secret}/${files[role].get(flag)?.key})`;

  const [coordCert] = certs(read("coordinator", "--tls-cert"));
  const [workerCert] = certs(read("worker", "--tls-cert"));
  if (!coordCert) fail(`${where("coordinator", "--tls-cert")}: no PEM certificate`);
  if (!workerCert) fail(`${where("worker", "--tls-cert")}: no PEM certificate`);
  if (coordCert) {
    if (!keyMatches(coordCert, read("coordinator", "--tls-key"))) fail(`${where("coordinator", "--tls-key")}: not the key of --tls-cert`);
    if (!chainsTo(coordCert, certs(read("worker", "--tls-ca")))) fail(`${where("coordinator", "--tls-cert")}: does not chain to the workers' --tls-ca`);
    if (coordCert.keyUsage && !coordCert.keyUsage.includes(EKU.server)) fail(`${where("coordinator", "--tls-cert")}: no serverAuth extended key usage`);
    const wArgs = pods.worker.args;
    const dialed = (flagValue(wArgs, "--coordinator") ?? pods.worker.env.get("RAPTR_COORDINATOR") ?? "").replace(/:\d+$/, "");
    const name = flagValue(wArgs, "--tls-server-name") ?? dialed;
    if (!coordCert.checkHost(name)) fail(`${where("coordinator", "--tls-cert")}: does not name ${name}, the host workers dial (subjectAltName ${coordCert.subjectAltName})`);
    const local = (pods.coordinator.env.get("RAPTR_COORDINATOR") ?? "").replace(/:\d+$/, "");
    if (local && !(/^[\d.]+$/.test(local) ? coordCert.checkIP(local) : coordCert.checkHost(local))) {
      fail(`${where("coordinator", "--tls-cert")}: does not name ${local} (RAPTR_COORDINATOR of raptrctl in the coordinator pod)`);
    }
  }
  if (workerCert) {
    if (!keyMatches(workerCert, read("worker", "--tls-key"))) fail(`${where("worker", "--tls-key")}: not the key of --tls-cert`);
    if (!chainsTo(workerCert, certs(read("coordinator", "--tls-client-ca")))) fail(`${where("worker", "--tls-cert")}: does not chain to the coordinator's --tls-client-ca`);
    if (workerCert.keyUsage && !workerCert.keyUsage.includes(EKU.client)) fail(`${where("worker", "--tls-cert")}: no clientAuth extended key usage`);
    const uris = (workerCert.subjectAltName ?? "").split(/,\s*/).filter((n) => n.startsWith("URI:")).map((n) => n.slice(4));
    const sts = pods.worker.workload;
    for (let i = 0; i < (sts.spec.replicas ?? 1); i++) {
      const podId = `${sts.metadata.name}-${i}`;
      const ok = uris.some((u) => {
        const pool = /^spiffe:\/\/raptr\/worker-pool\/(.+)$/.exec(u);
        const one = /^spiffe:\/\/raptr\/worker\/(.+)$/.exec(u);
        return (pool && podId.startsWith(pool[1])) || (one && (podId === one[1] || podId.startsWith(one[1] + "/")));
      });
      if (!ok) fail(`${where("worker", "--tls-cert")}: its URI SANs (${uris.join(", ") || "none"}) do not authorize worker id ${podId}`);
    }
  }
  const tokens = read("coordinator", "--auth-tokens")?.toString() ?? "";
  const lines = tokens.split("\n").map((l) => l.replace(/#.*/, "").trim()).filter(Boolean); // as the coordinator reads it
  if (lines.length === 0) fail(`${where("coordinator", "--auth-tokens")}: no tokens`);
  for (const l of lines) {
    if (!/^\S+\s+(admin|submitter|reader|worker)\s+sha256:[0-9a-f]{64}$/.test(l)) fail(`${where("coordinator", "--auth-tokens")}: bad line ${JSON.stringify(l)} (want <name> <role> sha256:<hex>)`);
  }
  for (const role of ["coordinator", "worker"]) {
    const t = read(role, "--metrics-token-file")?.toString() ?? "";
    if (!/^\S{16,}\s*$/.test(t)) fail(`${where(role, "--metrics-token-file")}: not one token of 16 or more characters`);
  }
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

// Stages of a Dockerfile, with `FROM` names expanded from the global ARGs (those before the first
// FROM; `args` overrides their defaults, as --build-arg does).
function parseDockerfile(text, args = {}) {
  const lines = [];
  let cur = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#") || line === "") {
      if (cur === "") continue;
      if (line.startsWith("#")) continue; // comments inside continuations
    }
    if (line.endsWith("\\")) cur += line.slice(0, -1) + " ";
    else {
      cur += line;
      if (cur.trim()) lines.push(cur.trim());
      cur = "";
    }
  }
  const stages = [];
  const global = {};
  const expand = (v) => v.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => global[a ?? b] ?? "");
  for (const l of lines) {
    const m = /^(\S+)\s+(.*)$/.exec(l);
    if (!m) continue;
    const instr = m[1].toUpperCase();
    const rest = m[2];
    if (instr === "FROM") {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(rest);
      stages.push({ from: expand(f[1]), name: f[2], instrs: [] });
    } else if (stages.length) stages.at(-1).instrs.push({ instr, rest });
    else if (instr === "ARG") {
      const a = /^(\w+)(?:=(.*))?$/.exec(rest.trim());
      if (a) global[a[1]] = args[a[1]] ?? a[2] ?? "";
    }
  }
  return stages;
}

// A stage and the stages it is built FROM, base first.
function stageChain(stages, last) {
  const chain = [];
  for (let s = last; s; s = stages.find((t) => t.name && t.name === s.from)) chain.unshift(s);
  return chain;
}

function checkDocker(file, helpDir, packagesFile) {
  // The CUDA Dockerfile has two toolkit sources (ARG CUDA_SOURCE): check the build each gives.
  const text = fs.readFileSync(file, "utf8");
  const sources = /^ARG CUDA_SOURCE=/m.test(text) ? ["apt", "local"] : [undefined];
  for (const src of sources) checkDockerVariant(file, text, src, helpDir, packagesFile);
}

function checkDockerVariant(file, text, cudaSource, helpDir, packagesFile) {
  const name = path.basename(file) + (cudaSource ? ` (CUDA_SOURCE=${cudaSource})` : "");
  const stages = parseDockerfile(text, cudaSource ? { CUDA_SOURCE: cudaSource } : {});
  const build = stages.find((s) => s.name === "build");
  if (!build) {
    fail(`${name}: no 'FROM ... AS build' stage`);
    return;
  }
  // The build stage (and the stages it is built FROM) run CI's scripts.
  const chain = stageChain(stages, build);
  const runs = chain.flatMap((s) => s.instrs.filter((i) => i.instr === "RUN").map((i) => i.rest));
  const envThen = (script) => new RegExp(`^(?:\\w+=(?:"[^"]*"|\\S+)\\s+)*${script}\\b`);
  if (!runs.some((r) => envThen("scripts/install-deps\\.sh").test(r))) fail(`${name}: build stage does not RUN scripts/install-deps.sh`);
  const buildRun = runs.map((r) => r.split(/\s*&&\s*/).slice(-1)[0]).find((r) => envThen("scripts/build\\.sh").test(r));
  if (!buildRun) fail(`${name}: build stage does not RUN scripts/build.sh`);
  if (file.includes("cuda") && !/-DRAPTR_CUDA=ON/.test(buildRun ?? "")) fail(`${name}: scripts/build.sh without -DRAPTR_CUDA=ON`);
  if (!/^debian:12\b/.test(chain[0].from)) fail(`${name}: build stage is not based on debian:12 (CI's system) but ${chain[0].from}`);

  const final = stages.at(-1);
  if (final === build) fail(`${name}: not multi-stage (the last stage is the build stage)`);
  const finalChain = stageChain(stages, final);
  if (!/^debian:12\b/.test(finalChain[0].from)) fail(`${name}: runtime stage is not based on debian:12 but ${finalChain[0].from}`);
  // USER, ENTRYPOINT, CMD, EXPOSE: the last one along the runtime chain; RUN/COPY: all of them.
  const get = (instr) => finalChain.flatMap((s) => s.instrs).filter((i) => i.instr === instr).map((i) => i.rest);
  const user = get("USER").at(-1);
  if (!user || /^(0|root)(:|$)/.test(user)) fail(`${name}: final stage does not run as a non-root USER`);
  const json = (instr) => {
    const v = get(instr).at(-1);
    if (!v) return [];
    try {
      return JSON.parse(v);
    } catch {
      fail(`${name}: ${instr} is not in JSON (exec) form: ${v}`);
      return [];
    }
  };
  const entry = json("ENTRYPOINT");
  const cmd = json("CMD");
  const binary = path.basename(entry[0] ?? "");
  if (!["raptr-coordinator", "raptr-worker"].includes(binary)) {
    fail(`${name}: ENTRYPOINT is not raptr-coordinator or raptr-worker: ${JSON.stringify(entry)}`);
    return;
  }
  if (binary === "raptr-worker" && entry[1] !== "serve") fail(`${name}: ENTRYPOINT must be 'raptr-worker serve'`);
  const args = [...entry.slice(1), ...cmd].filter((a) => a !== "serve");
  checkFlags(`${name} ENTRYPOINT/CMD`, binary, args, helpDir);
  if (binary === "raptr-worker") checkWorkerBackend(`${name} ENTRYPOINT/CMD`, args, name.includes("cuda"));
  const copies = get("COPY").join("\n");
  if (!new RegExp(`--from=build\\s+\\S*/${binary}\\s`).test(copies)) fail(`${name}: does not COPY --from=build the ${binary} binary`);
  const targets = /RAPTR_BUILD_TARGETS=(?:"([^"]*)"|(\S+))/.exec(buildRun ?? "");
  if (targets && !(targets[1] ?? targets[2]).split(/\s+/).includes(binary)) fail(`${name}: RAPTR_BUILD_TARGETS does not build ${binary}`);

  const exposed = new Set(get("EXPOSE").flatMap((e) => e.split(/\s+/)).map((p) => Number(p.split("/")[0])));
  const listened = ["--listen", "--metrics-listen"].map((f) => flagValue(args, f)).filter(Boolean);
  if (binary === "raptr-coordinator" && !flagValue(args, "--listen")) fail(`${name}: no --listen in ENTRYPOINT/CMD`);
  if (!flagValue(args, "--metrics-listen")) fail(`${name}: no --metrics-listen in ENTRYPOINT/CMD`);
  for (const l of listened) {
    if (!l.startsWith("0.0.0.0:")) fail(`${name}: ${l} does not listen on 0.0.0.0`);
    if (!exposed.has(portOf(l))) fail(`${name}: listens on ${l} but does not EXPOSE ${portOf(l)}`);
  }
  for (const p of exposed) if (!listened.some((l) => portOf(l) === p)) fail(`${name}: EXPOSE ${p} is not a listen port`);

  // Runtime packages: every Debian package behind `ldd` of the binary is installed explicitly.
  if (packagesFile) {
    const installed = new Set(
      finalChain
        .flatMap((s) => s.instrs)
        .filter((i) => i.instr === "RUN" && /apt-get install/.test(i.rest))
        .flatMap((i) => i.rest.split(/\s+/)),
    );
    const need = fs.readFileSync(packagesFile, "utf8").split(/\s+/).filter(Boolean);
    for (const pkg of need) {
      if (pkg === "libc6") continue;
      if (!installed.has(pkg)) fail(`${name}: runtime stage does not install ${pkg} (needed by ldd of ${binary})`);
    }
  }
  // The CUDA worker loads cuBLAS/cuBLASLt at run time (cudart is static): NVIDIA's packages are
  // not Debian's, so ldd above cannot name them.
  // raptr-worker links NCCL when the build finds it (cmake/Nccl.cmake): the data-parallel
  // all-reduce of CUDA workers. From a local toolkit the same libraries are copied in.
  if (cudaSource === "apt") {
    const runs = get("RUN").filter((r) => /apt-get install/.test(r)).join(" ");
    if (!/\blibcublas-(\$\{CUDA_VERSION\}|\d+-\d+)(\s|$)/.test(runs)) fail(`${name}: runtime stage does not install cuBLAS (libcublas-<cuda version>)`);
    if (!/\blibnccl2(\s|$)/.test(runs)) fail(`${name}: runtime stage does not install NCCL (libnccl2)`);
  } else if (cudaSource === "local") {
    for (const lib of ["libcublas.so.13", "libcublasLt.so.13", "libnccl.so.2"]) {
      if (!new RegExp(`--from=cuda-toolkit\\s.*\\b${lib.replace(/\./g, "\\.")}(\\s|$)`).test(copies)) fail(`${name}: runtime stage does not COPY ${lib} from the toolkit`);
    }
  }
  console.log(`${name}: ${stages.length} stages, ${binary} ${args.join(" ")}`);
}

// ---------------------------------------------------------------------------------------------

const [mode, ...rest] = process.argv.slice(2);
try {
  if (mode === "k8s") await checkK8s(rest[0], rest[1], rest[2], rest[3]);
  else if (mode === "docker") checkDocker(rest[0], rest[1], rest[2]);
  else {
    console.error("usage: validate.mjs k8s OVERLAY RENDERED.yaml HELP_DIR [SECRETS.yaml] | docker DOCKERFILE HELP_DIR [PACKAGES]");
    process.exit(2);
  }
} catch (e) {
  fail(`${mode} ${rest[0]}: ${e.stack}`);
}
for (const p of problems) console.log(`FAIL ${p}`);
process.exit(problems.length ? 1 : 0);
