#!/usr/bin/env python3
"""Checks the raptr Grafana dashboard against a real Prometheus server.

  query_panels.py --dashboard dashboards/grafana/raptr.json --lint
      the JSON only: schema fields, unique panel ids, every panel target has a PromQL expr and
      uses the ${datasource} variable, the template variables the exprs use exist.
  query_panels.py --dashboard ... --prometheus http://127.0.0.1:9090 --start T0 --end T1 \
      --var job_name=mon --var worker=.*
      every panel target's expr, with the template variables substituted, is run through the
      HTTP API: a range query over [T0, T1] (step 1 s; an instant query at T1 for targets marked
      instant) must return at least one series with a finite value. Each variable's own query
      (label_values(metric, label)) must return the value given with --var (when it is not a
      regex). Prints one line per target; exits 1 if any failed.
"""
import argparse
import json
import math
import re
import sys
import urllib.error
import urllib.parse
import urllib.request


def panels_of(dashboard):
    for p in dashboard.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:  # collapsed rows hold their panels
            yield q


def targets_of(dashboard):
    for p in panels_of(dashboard):
        for t in p.get("targets", []) or []:
            yield p, t


BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
            "__range_ms", "__from", "__to", "__dashboard", "datasource"}
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def lint(dashboard):
    errors = []
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dashboard:
            errors.append("dashboard has no %r" % key)
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        errors.append("no datasource variable")
    jv = variables.get("job_name")
    if not jv or not jv.get("multi") or not jv.get("includeAll"):
        errors.append("job_name must be a multi-value variable with All")
    ids = [p.get("id") for p in panels_of(dashboard)]
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique: %s" % ids)
    n = 0
    for p in panels_of(dashboard):
        if p.get("type") == "row":
            continue
        if "gridPos" not in p:
            errors.append("panel %r has no gridPos" % p.get("title"))
        if not p.get("targets"):
            errors.append("panel %r has no targets" % p.get("title"))
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append("panel %r does not use ${datasource}" % p.get("title"))
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(refs) != len(set(refs)):
            errors.append("panel %r repeats a refId" % p.get("title"))
        for t in p.get("targets", []):
            n += 1
            if not t.get("expr", "").strip():
                errors.append("panel %r target %s has no expr" % (p.get("title"), t.get("refId")))
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                errors.append("panel %r target %s does not use ${datasource}"
                              % (p.get("title"), t.get("refId")))
            for m in VAR_RE.finditer(t.get("expr", "")):
                name = next(g for g in m.groups() if g)
                if name not in BUILTINS and name not in variables:
                    errors.append("panel %r uses undefined variable $%s" % (p.get("title"), name))
    return errors, n


def substitute(expr, values, rate_interval, range_s):
    def repl(m):
        name = next(g for g in m.groups() if g)
        if name in values:
            return values[name]
        if name in ("__rate_interval", "__interval"):
            return rate_interval
        if name == "__range":
            return "%ds" % range_s
        if name == "__range_s":
            return str(range_s)
        raise KeyError("no value for $%s" % name)
    return VAR_RE.sub(repl, expr)


def api(base, path, params):
    url = base.rstrip("/") + path + "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        raise RuntimeError("%s: %s" % (body.get("errorType"), body.get("error")))
    return body["data"]


def finite_values(data):
    out = 0
    for series in data.get("result", []):
        values = series.get("values") or ([series["value"]] if "value" in series else [])
        out += sum(1 for _, v in values if math.isfinite(float(v)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--lint", action="store_true")
    ap.add_argument("--prometheus")
    ap.add_argument("--start", type=float)
    ap.add_argument("--end", type=float)
    ap.add_argument("--var", action="append", default=[], help="NAME=VALUE")
    ap.add_argument("--rate-interval", default="5s")
    args = ap.parse_args()

    dashboard = json.load(open(args.dashboard))
    errors, n = lint(dashboard)
    for e in errors:
        print("FAIL lint: " + e)
    if args.lint or errors:
        if not errors:
            print("ok lint: %d panels, %d targets" % (sum(1 for _ in panels_of(dashboard)), n))
        return 1 if errors else 0

    values = dict(v.split("=", 1) for v in args.var)
    failed = 0
    # The variables' own queries.
    for v in dashboard["templating"]["list"]:
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((\w+)\s*,\s*(\w+)\)\s*", q)
        if not m:
            print("FAIL variable %s: cannot run %r" % (v["name"], q))
            failed += 1
            continue
        got = api(args.prometheus, "/api/v1/label/%s/values" % m.group(2),
                  {"match[]": m.group(1), "start": args.start, "end": args.end})
        want = values.get(v["name"], "")
        ok = bool(got) and (want in got or re.escape(want) != want)
        print("%s variable %s: %s -> %s" % ("ok" if ok else "FAIL", v["name"], q, got))
        failed += not ok

    range_s = max(1, int(math.ceil(args.end - args.start)))
    for p, t in targets_of(dashboard):
        expr = substitute(t["expr"], values, args.rate_interval, range_s)
        label = "panel %r target %s" % (p["title"], t.get("refId"))
        try:
            if t.get("instant"):
                data = api(args.prometheus, "/api/v1/query", {"query": expr, "time": args.end})
            else:
                data = api(args.prometheus, "/api/v1/query_range",
                           {"query": expr, "start": args.start, "end": args.end, "step": 1})
        except Exception as e:  # a parse or execution error
            print("FAIL %s: %s\n     %s" % (label, e, expr))
            failed += 1
            continue
        series = len(data.get("result", []))
        finite = finite_values(data)
        if finite == 0:
            print("FAIL %s: %d series, no finite value\n     %s" % (label, series, expr))
            failed += 1
        else:
            print("ok %s: %d series, %d finite values" % (label, series, finite))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
