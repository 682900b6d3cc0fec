// The deployment guide's four key metrics, alerted on (docs/deploy.md, "Metrics and alerts"):
// generation latency, error rate, GPU utilization and cold start, one rule each, thresholds from main.bicep.
//
// The app's OpenTelemetry metrics reach Application Insights under their own names (src/noisett_mcp/
// telemetry/names.py, which tests/test_alerts.py checks these rules against). Three are metric alerts on its custom
// metrics; the error rate is a ratio of two counters, which a metric alert cannot compute, so it is a log alert
// on the customMetrics table. With no e-mail address there is no action group: the rules still fire, in the
// portal's Alerts blade, and nothing is sent until someone is named.

@description('Azure region of the log alert (metric alerts and action groups are global).')
param location string

@description('Prefix of the rules\' and the action group\'s names.')
param namePrefix string

@description('The Application Insights component the app sends its metrics to.')
param appInsightsName string

@description('E-mail addresses the alerts are sent to; empty: no action group, and nothing is sent.')
param alertEmails array = []

@description('Latency alert: fires when images took longer than this many seconds on average over 15 minutes.')
@minValue(1)
param latencyAlertSeconds int

@description('Error-rate alert: fires when more than this percent of generation requests failed over 15 minutes.')
@minValue(1)
@maxValue(100)
param errorRateAlertPercent int

@description('Error-rate alert: requests a 15-minute window needs before its rate counts (one failure alone is no rate).')
@minValue(1)
param errorRateAlertMinimumRequests int

@description('GPU alert: fires when GPU utilization averaged more than this percent over 15 minutes (sustained).')
@minValue(1)
@maxValue(100)
param gpuUtilizationAlertPercent int

@description('Cold-start alert: fires when a replica took longer than this many seconds from its start to ready.')
@minValue(1)
param coldStartAlertSeconds int

param tags object = {}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmails)) {
  name: '${namePrefix}-alerts'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take(namePrefix, 12)
    enabled: true
    emailReceivers: [
      for (email, i) in alertEmails: {
        name: 'email-${i}'
        emailAddress: email
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroupIds = empty(alertEmails) ? [] : [actionGroup!.id]
var metricActions = [for id in actionGroupIds: { actionGroupId: id }]

// Custom metrics from OpenTelemetry: a histogram carries sum, count, min and max, so Average is sum/count.
// skipMetricValidation: a rule may be created before the app has sent its first value.
var customMetrics = 'azure.applicationinsights'

resource latencyAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-generation-latency'
  location: 'global'
  tags: tags
  properties: {
    description: 'Images took longer than ${latencyAlertSeconds} s on average (target: under 60 s). First check: docs/deploy.md, "Metrics and alerts".'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'image-latency'
          metricNamespace: customMetrics
          metricName: 'noisett.generation.image.duration'
          timeAggregation: 'Average'
          operator: 'GreaterThan'
          threshold: latencyAlertSeconds
          skipMetricValidation: true
        }
      ]
    }
    autoMitigate: true
    actions: metricActions
  }
}

resource gpuUtilizationAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-gpu-utilization'
  location: 'global'
  tags: tags
  properties: {
    description: 'The GPU was over ${gpuUtilizationAlertPercent} % busy for 15 minutes: requests queue behind it. First check: docs/deploy.md, "Metrics and alerts".'
    severity: 3
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'gpu-utilization'
          metricNamespace: customMetrics
          metricName: 'noisett.gpu.utilization'
          timeAggregation: 'Average'
          operator: 'GreaterThan'
          threshold: gpuUtilizationAlertPercent
          skipMetricValidation: true
        }
      ]
    }
    autoMitigate: true
    actions: metricActions
  }
}

resource coldStartAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-cold-start'
  location: 'global'
  tags: tags
  properties: {
    description: 'A replica took over ${coldStartAlertSeconds} s from its start to ready (target: under 90 s). First check: docs/deploy.md, "Metrics and alerts".'
    severity: 3
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'cold-start'
          metricNamespace: customMetrics
          metricName: 'noisett.cold_start.duration'
          timeAggregation: 'Maximum'
          operator: 'GreaterThan'
          threshold: coldStartAlertSeconds
          skipMetricValidation: true
        }
      ]
    }
    autoMitigate: true
    actions: metricActions
  }
}

// Failed generations (noisett.errors, operation generate) over generation requests that ended, in percent.
// Counters arrive as deltas, so valueSum over the window is the count in it. Model-load errors are left out:
// each job that a failed load fails is counted as its own generate error already.
var errorRateQuery = 'customMetrics | where name == "noisett.generation.requests" or (name == "noisett.errors" and tostring(customDimensions["noisett.operation"]) == "generate") | summarize errors = sumif(valueSum, name == "noisett.errors"), requests = sumif(valueSum, name == "noisett.generation.requests") | where requests >= ${errorRateAlertMinimumRequests} | extend errorRatePercent = 100.0 * errors / requests'

resource errorRateAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-error-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: generation error rate'
    description: 'Over ${errorRateAlertPercent} % of generation requests failed (target: under 5 %). First check: docs/deploy.md, "Metrics and alerts".'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: errorRateQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'errorRatePercent'
          operator: 'GreaterThan'
          threshold: errorRateAlertPercent
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

@description('The action group\'s id; empty while no e-mail address is named.')
output actionGroupId string = empty(alertEmails) ? '' : actionGroup!.id

output ruleNames array = [
  latencyAlert.name
  errorRateAlert.name
  gpuUtilizationAlert.name
  coldStartAlert.name
]
