"""The alert rules of infra/bicep/modules/alerts.bicep, checked against the one list of metrics and alerts in
noisett_mcp.telemetry.names: each of the guide's four rules, its threshold parameter and default, its action
group, and that it watches a metric the code emits (read structurally, like tests/test_infra.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from noisett_mcp.telemetry import names as metric_names
from noisett_mcp.telemetry.names import ALERTS, METRICS, Alert
from tests.bicep_reader import BicepFile, Call, NonNull, Prop, Ref, Ternary, Unary, read

ROOT = Path(__file__).resolve().parent.parent
BICEP = ROOT / "infra" / "bicep"
GUIDE = {"latencyAlert": 90, "errorRateAlert": 10, "gpuUtilizationAlert": 90, "coldStartAlert": 120}


@pytest.fixture(scope="module")
def main() -> BicepFile:
    return read(BICEP / "main.bicep")


@pytest.fixture(scope="module")
def alerts() -> BicepFile:
    return read(BICEP / "modules" / "alerts.bicep")


def _properties(alerts: BicepFile, alert: Alert) -> dict[str, Any]:
    return alerts.resources[alert.rule].value["properties"]


def test_the_guide_has_one_rule_per_row_with_its_threshold_as_a_parameter(
    main: BicepFile, alerts: BicepFile
) -> None:
    assert {alert.rule: alert.default for alert in ALERTS} == GUIDE
    rules = alerts.resources_of_type("Microsoft.Insights/metricAlerts") + alerts.resources_of_type(
        "Microsoft.Insights/scheduledQueryRules"
    )
    assert sorted(rule.name for rule in rules) == sorted(GUIDE)
    passed = main.modules["alerts"].value["params"]
    for alert in ALERTS:
        assert main.params[alert.parameter].value == alert.default, alert.parameter
        assert passed[alert.parameter] == Ref(alert.parameter)  # main.bicep hands it on as it is
        assert alerts.params[alert.parameter].value is None  # the module has no default of its own
        criterion = _properties(alerts, alert)["criteria"]["allOf"]
        assert len(criterion) == 1 and criterion[0]["threshold"] == Ref(alert.parameter)
        assert criterion[0]["operator"] == "GreaterThan"
        assert criterion[0]["timeAggregation"] == alert.aggregation
    assert passed["appInsightsName"] == Prop(Prop(Ref("monitoring"), "outputs"), "appInsightsName")


def test_each_rule_watches_a_metric_the_code_emits(alerts: BicepFile) -> None:
    emitted = {metric.name for metric in METRICS}
    for alert in ALERTS:
        assert {metric.name for metric in alert.metrics} <= emitted
        properties = _properties(alerts, alert)
        assert properties["scopes"] == [Prop(Ref("appInsights"), "id")]
        [criterion] = properties["criteria"]["allOf"]
        if alert.kind == "metric":
            [metric] = alert.metrics
            assert criterion["metricName"] == metric.name, alert.rule
            assert alerts.resolve(criterion["metricNamespace"]) == "azure.applicationinsights"
            assert criterion["skipMetricValidation"] is True  # deployable before the first value arrives
        else:
            query = alerts.resolve(criterion["query"])
            text = "".join(part for part in query.parts if isinstance(part, str))
            assert text.startswith("customMetrics | ")
            for metric in alert.metrics:
                assert f'"{metric.name}"' in text, metric.name
            assert f'customDimensions["{metric_names.OPERATION}"]) == "generate"' in text
            assert Ref("errorRateAlertMinimumRequests") in query.parts  # one failure alone is no rate
            assert f"extend {criterion['metricMeasureColumn']} = 100.0 * errors / requests" in text


def test_the_windows_make_gpu_utilization_a_sustained_figure(alerts: BicepFile) -> None:
    for alert in ALERTS:
        properties = _properties(alerts, alert)
        assert (properties["evaluationFrequency"], properties["windowSize"]) == ("PT5M", "PT15M")
        assert properties["enabled"] is True and properties["autoMitigate"] is True
        assert "docs/deploy.md" in "".join(p for p in properties["description"].parts if isinstance(p, str))


def test_rules_go_to_an_action_group_only_once_someone_is_named(main: BicepFile, alerts: BicepFile) -> None:
    assert main.params["alertEmails"].value == [] and alerts.params["alertEmails"].value == []
    group = alerts.resources["actionGroup"]
    assert group.resource_type == "Microsoft.Insights/actionGroups"
    assert group.condition == Unary("!", Call("empty", (Ref("alertEmails"),)))
    receivers = group.value["properties"]["emailReceivers"]
    assert receivers.iterable == Ref("alertEmails") and receivers.body["emailAddress"] == Ref("email")
    assert alerts.variables["actionGroupIds"].value == Ternary(
        Call("empty", (Ref("alertEmails"),)), [], [Prop(NonNull(Ref("actionGroup")), "id")]
    )
    for alert in ALERTS:
        actions = _properties(alerts, alert)["actions"]
        if alert.kind == "metric":
            assert actions == Ref("metricActions")
        else:
            assert actions == {"actionGroups": Ref("actionGroupIds")}
    metric_actions = alerts.variables["metricActions"].value
    assert metric_actions.iterable == Ref("actionGroupIds") and metric_actions.body == {
        "actionGroupId": Ref("id")
    }


def test_the_thresholds_and_receivers_come_from_the_environment_and_are_checked_first(tmp_path: Path) -> None:
    example = read(BICEP / "main.bicepparam")
    for alert in ALERTS:
        assert example.params[alert.parameter].value == Call(
            "int", (Call("readEnvironmentVariable", (alert.variable, str(alert.default))),)
        )
    emails = example.params["alertEmails"].value
    assert emails.name == "filter" and emails.args[0].args[0] == Call(
        "readEnvironmentVariable", ("NOISETT_ALERT_EMAILS", "")
    )
    script = (BICEP / "deploy.sh").read_text()
    workflow = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    for variable in [alert.variable for alert in ALERTS] + ["NOISETT_ALERT_EMAILS"]:
        assert variable in script and re.search(rf"^\s+{variable}: ", workflow, re.MULTILINE), variable

    # deploy.sh refuses what Bicep would refuse, before it runs az, git or curl.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("az", "git", "curl"):
        (fake_bin / tool).write_text("#!/bin/sh\necho called >&2\nexit 99\n")
        (fake_bin / tool).chmod(0o755)
    for variable, value, message in [
        (
            "NOISETT_ALERT_GPU_PERCENT",
            "92.5",
            "NOISETT_ALERT_GPU_PERCENT must be a whole number of 1 or more",
        ),
        (
            "NOISETT_ALERT_LATENCY_SECONDS",
            "0",
            "NOISETT_ALERT_LATENCY_SECONDS must be a whole number of 1 or",
        ),
        (
            "NOISETT_ALERT_EMAILS",
            "ops@example.com,ops",
            "NOISETT_ALERT_EMAILS: 'ops' is not an e-mail address",
        ),
    ]:
        env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "AZURE_AD_CLIENT_ID": "x", variable: value}
        result = subprocess.run(
            ["bash", str(BICEP / "deploy.sh")], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2 and result.stderr.startswith(message), result.stderr


def test_docs_explain_every_metric_and_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \| (\w+) \| `([^`]+)` \|", readme, re.MULTILINE)
    assert rows == [(metric.name, metric.kind, metric.unit) for metric in METRICS]
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    section = deploy[deploy.index("## Metrics and alerts") :]
    for metric in METRICS:
        assert metric.name in section, metric.name
    for alert in ALERTS:
        assert alert.parameter in section and alert.variable in section, alert.rule
