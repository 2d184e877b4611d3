"""PromQL of the deploy assets: the expressions of the Grafana dashboard and the alert rules,
the metric names they use, and the names a running Spindle exports on /metrics.

`python promql.py dashboard-rules DASHBOARD.json OUT.yaml` writes the dashboard's queries as a
Prometheus rules file (Grafana variables replaced), so `promtool check rules` parses them."""

import json
import re
import sys

import yaml

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,")


def grafana_to_promql(expr):
    """Replaces Grafana's variables with values Prometheus accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def metric_names(expr):
    """Metric names in a PromQL expression (not functions, keywords, labels or durations)."""
    e = grafana_to_promql(expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = GROUPING.sub(" ", e)
    names = set()
    for m in IDENT.finditer(e):
        word = m.group(0)
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # 1e6, 5m after an offset
        if e[m.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        if word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs(path):
    """(title, expression) of every query of a dashboard, rows included."""
    with open(path) as f:
        dash = json.load(f)
    out = []

    def panels(items):
        for p in items:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", ""), t["expr"]))
            panels(p.get("panels", []))

    panels(dash.get("panels", []))
    return out


def dashboard_variable_metrics(path):
    """Metric names the dashboard's template variables query (label_values(metric, label))."""
    with open(path) as f:
        dash = json.load(f)
    names = set()
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        text = q.get("query", "") if isinstance(q, dict) else (q or "")
        if v.get("type") == "query":
            names.update(LABEL_VALUES.findall(text))
    return names


def rule_exprs(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in rules["groups"] for r in g["rules"]]


def exported_names(metrics_text):
    """Sample names on /metrics, plus the names every declared family exports (a family with
    labels has no sample until it is first used)."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            kind = kind.strip()
            if kind == "counter":  # OpenMetrics: the family x has the sample x_total
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
            elif kind == "summary":
                names.update({name, name + "_sum", name + "_count"})
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def write_dashboard_rules(dashboard, out):
    rules = [{"record": f"dashboard:query:{i}", "expr": grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_exprs(dashboard))]
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    return len(rules)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "dashboard-rules":
        n = write_dashboard_rules(sys.argv[2], sys.argv[3])
        print(f"{n} dashboard queries written to {sys.argv[3]}")
    else:
        sys.exit(__doc__)
