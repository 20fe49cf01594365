"""Every PromQL expression of the dashboard and the alert rules parses and uses only exported metrics.

The metric catalogue is k8s/monitoring/metrics.yaml: families, their labels, who exports them, and the
label values an expression may match. Each selector's metric name, each label it matches on, each
value it matches, and each ``by (...)`` label must come from there.
"""

from __future__ import annotations

import json
import re

import promql_parser
import pytest
import yaml
from k8s_render import K8S, kustomize

CATALOGUE = yaml.safe_load((K8S / "monitoring" / "metrics.yaml").read_text())
SCRAPE_LABELS = set(CATALOGUE["scrape_labels"])
#: Grafana's built-in variables, replaced by representative values before parsing.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def series_catalogue() -> dict[str, dict]:
    """Every series name an expression may select -> its labels and allowed label values."""
    series = {}
    for name, family in CATALOGUE["families"].items():
        entry = {"labels": set(family["labels"]), "values": family.get("label_values", {}), "family": name}
        if family["type"] == "histogram":
            series[f"{name}_bucket"] = {**entry, "labels": entry["labels"] | {"le"}}
            series[f"{name}_sum"] = entry
            series[f"{name}_count"] = entry
        else:
            series[name] = entry
    for name, spec in {**CATALOGUE["prometheus_series"], **CATALOGUE.get("cluster_series", {})}.items():
        series[name] = {"labels": set(spec["labels"]), "values": {}, "family": name}
    return series


SERIES = series_catalogue()


def monitoring_resources() -> list[dict]:
    return kustomize(K8S / "monitoring")


def dashboard() -> dict:
    config_map = next(r for r in monitoring_resources() if r["kind"] == "ConfigMap")
    return json.loads(next(iter(config_map["data"].values())))


def dashboard_variables(board: dict) -> dict[str, str]:
    """Dashboard variable -> a value to substitute (the current one, or the variable's name)."""
    values = dict(GRAFANA_BUILTINS)
    for variable in board["templating"]["list"]:
        current = variable.get("current", {}).get("value")
        values[variable["name"]] = current or variable["name"]
    return values


def substitute(expression: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"undefined dashboard variable ${name} in {expression!r}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expression)


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every alert rule and every dashboard query."""
    found = []
    for resource in monitoring_resources():
        if resource["kind"] != "PrometheusRule":
            continue
        for group in resource["spec"]["groups"]:
            for rule in group["rules"]:
                found.append((f"alert {rule['alert']}", rule["expr"]))
    board = dashboard()
    variables = dashboard_variables(board)
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append(
                (f"panel {panel['title']!r} {target['refId']}", substitute(target["expr"], variables))
            )
    return found


EXPRESSIONS = expressions()


def _alternatives(value: str) -> list[str]:
    assert re.fullmatch(r"[\w|-]+", value), f"only plain alternations are checked: {value!r}"
    return value.split("|")


def check_selector(node, where: str) -> None:
    matchers = node.matchers.matchers
    assert not node.matchers.or_matchers, f"{where}: 'or' matchers are not used"
    name = node.name or next((m.value for m in matchers if m.name == "__name__"), None)
    assert name in SERIES, f"{where}: metric {name!r} is not in k8s/monitoring/metrics.yaml"
    series = SERIES[name]
    for matcher in matchers:
        if matcher.name == "__name__":
            continue
        assert matcher.name in series["labels"] | SCRAPE_LABELS, (
            f"{where}: {name} has no label {matcher.name!r}"
        )
        if matcher.name == "job":
            allowed = set(CATALOGUE["jobs"])
        else:
            allowed = set(series["values"].get(matcher.name, []))
        if not allowed:
            continue
        if matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual):
            values = [matcher.value]
        else:
            values = _alternatives(matcher.value)
        assert set(values) <= allowed, (
            f"{where}: {name}{{{matcher.name}}} never takes {set(values) - allowed}"
        )


def labels_below(node) -> set[str]:
    labels = set(SCRAPE_LABELS)

    def collect(child):
        if isinstance(child, promql_parser.VectorSelector) and child.name in SERIES:
            labels.update(SERIES[child.name]["labels"])

    promql_parser.walk(node, collect)
    return labels


def check(expression: str, where: str) -> set[str]:
    """Parse and check one expression; returns the catalogue families it uses."""
    tree = promql_parser.parse(expression)
    used = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            check_selector(node, where)
            used.add(SERIES[node.name]["family"])
        elif (
            isinstance(node, promql_parser.AggregateExpr)
            and node.modifier is not None
            and node.modifier.type == promql_parser.AggModifierType.By
        ):
            missing = set(node.modifier.labels) - labels_below(node.expr)
            assert not missing, f"{where}: grouping by {missing}, which the series below do not carry"

    promql_parser.walk(tree, visit)
    assert used, f"{where}: selects no metric"
    return used


def test_there_are_expressions_from_both_sources():
    sources = {where.split()[0] for where, _ in EXPRESSIONS}
    assert sources == {"alert", "panel"}
    assert len(EXPRESSIONS) > 30


@pytest.mark.parametrize("where, expression", EXPRESSIONS, ids=[where for where, _ in EXPRESSIONS])
def test_expression_parses_and_uses_exported_metrics(where, expression):
    check(expression, where)


def test_every_catalogued_family_is_used():
    """The catalogue lists exactly what the manifests rely on: no stale entries."""
    used = set()
    for where, expression in EXPRESSIONS:
        used |= check(expression, where)
    board = dashboard()
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
            assert label in SERIES[metric]["labels"] | SCRAPE_LABELS
            used.add(SERIES[metric]["family"])
    catalogued = (
        set(CATALOGUE["families"])
        | set(CATALOGUE["prometheus_series"])
        | set(CATALOGUE.get("cluster_series", {}))
    )
    assert used == catalogued, f"unused: {catalogued - used}"


def test_exported_families_belong_to_the_services():
    services = set(CATALOGUE["jobs"])
    for name, family in CATALOGUE["families"].items():
        assert family["type"] in ("counter", "gauge", "histogram"), name
        assert set(family["exported_by"]) <= services, name
        assert not (family["type"] == "counter") ^ name.endswith("_total"), f"{name}: counters end in _total"
        assert set(family.get("label_values", {})) <= set(family["labels"]), name


@pytest.mark.parametrize(
    "expression, problem",
    [
        ('rate(multipass_passes_total{outcome="exploded"}[5m])', "never takes"),
        ("rate(multipass_pass_duration_seconds[5m])", "not in k8s/monitoring"),
        ("sum by (tenant) (rate(multipass_passes_total[5m]))", "grouping by"),
        ('multipass_gpu_memory_bytes{gpu="0"}', "has no label"),
        ('up{job="gpu-worker"}', "never takes"),
        ("sum(rate(multipass_jobs_submitted_total[5m])", ""),
    ],
)
def test_the_checks_catch_mistakes(expression, problem):
    with pytest.raises((AssertionError, ValueError)) as raised:
        check(expression, "self-check")
    assert problem in str(raised.value)


def test_undefined_dashboard_variables_are_refused():
    with pytest.raises(AssertionError, match="undefined dashboard variable"):
        substitute('rate(x{pod=~"$pods"}[5m])', {"namespace": "multipass"})
