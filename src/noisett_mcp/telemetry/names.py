"""The one list of Noisett's metrics and of the alerts on them.

`Telemetry` registers its instruments from `METRICS`; the Bicep alert rules (infra/bicep/modules/alerts.bicep)
name the metrics of `ALERTS`, and tests/test_infra.py checks every rule against this list, so that a renamed
metric cannot leave an alert watching nothing. README.md's metrics table is checked against it too.

Names follow OpenTelemetry's semantic-conventions style: a `noisett.` namespace, dot-separated, `.duration`
for histograms of seconds, UCUM units (`s`, `By`, `%`, `{image}`), and `error.type` for the kind of a failure.
Azure Monitor's exporter keeps the names as they are: they are the `name` of the `customMetrics` table, and
of the custom metrics (namespace `azure.applicationinsights`) in Application Insights' metrics explorer.
GPU utilization is in percent, as NVML and nvidia-smi report it, so that an alert threshold is a whole number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InstrumentKind = Literal["histogram", "counter", "gauge"]

# Attributes. Prompts are never attributes.
MODEL = "noisett.model"
VARIANT = "noisett.variant"
STYLE = "noisett.style"
STATUS = "noisett.status"
OPERATION = "noisett.operation"
ERROR_TYPE = "error.type"
STAGE = "noisett.cold_start.stage"
GPU_ID = "hw.id"  # the GPU's UUID
GPU_NAME = "hw.name"
GENERATION = (MODEL, VARIANT, STYLE)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()


GENERATION_DURATION = Metric(
    "noisett.generation.duration",
    "histogram",
    "s",
    "Time of one generation request on the GPU, from its start to its last image stored.",
    GENERATION,
)
IMAGE_DURATION = Metric(
    "noisett.generation.image.duration",
    "histogram",
    "s",
    "GPU time of one image: a pipeline call's time divided by the images it rendered.",
    GENERATION,
)
QUEUE_WAIT = Metric(
    "noisett.queue.wait_time",
    "histogram",
    "s",
    "Time a generation request waited in the queue (and for the model to load).",
    GENERATION,
)
IMAGES_GENERATED = Metric(
    "noisett.images.generated", "counter", "{image}", "Images rendered and stored.", GENERATION
)
REQUESTS = Metric(
    "noisett.generation.requests",
    "counter",
    "{request}",
    "Generation requests that ended, by noisett.status (done, failed or cancelled): the error rate's "
    "denominator.",
    (*GENERATION, STATUS),
)
ERRORS = Metric(
    "noisett.errors",
    "counter",
    "{error}",
    "Failed model loads and generations, by error.type and noisett.operation (load or generate).",
    (*GENERATION, ERROR_TYPE, OPERATION),
)
QUEUE_DEPTH = Metric(
    "noisett.queue.depth",
    "gauge",
    "{job}",
    "Generation jobs waiting for the GPU (not counting the one running).",
)
GPU_UTILIZATION = Metric(
    "noisett.gpu.utilization",
    "gauge",
    "%",
    "Percent of the last sample period in which the GPU ran a kernel (NVML); absent without a GPU.",
    (GPU_ID, GPU_NAME),
)
GPU_MEMORY_USAGE = Metric(
    "noisett.gpu.memory.usage",
    "gauge",
    "By",
    "GPU memory in use (NVML); absent without a GPU.",
    (GPU_ID, GPU_NAME),
)
GPU_MEMORY_LIMIT = Metric(
    "noisett.gpu.memory.limit",
    "gauge",
    "By",
    "GPU memory in all (NVML); absent without a GPU.",
    (GPU_ID, GPU_NAME),
)
COLD_START = Metric(
    "noisett.cold_start.duration",
    "histogram",
    "s",
    "Seconds from the process's start to its model being ready to generate.",
)
COLD_START_STAGE = Metric(
    "noisett.cold_start.stage.duration",
    "histogram",
    "s",
    "Seconds of one stage of the cold start, by noisett.cold_start.stage; the stages add up to the whole.",
    (STAGE,),
)

METRICS: tuple[Metric, ...] = (
    GENERATION_DURATION,
    IMAGE_DURATION,
    QUEUE_WAIT,
    IMAGES_GENERATED,
    REQUESTS,
    ERRORS,
    QUEUE_DEPTH,
    GPU_UTILIZATION,
    GPU_MEMORY_USAGE,
    GPU_MEMORY_LIMIT,
    COLD_START,
    COLD_START_STAGE,
)
GPU_METRICS = (GPU_UTILIZATION, GPU_MEMORY_USAGE, GPU_MEMORY_LIMIT)


@dataclass(frozen=True)
class Alert:
    """One alert rule of the deployment guide's table, as infra/bicep/modules/alerts.bicep declares it.

    `rule` is the Bicep resource's symbolic name; `parameter` its threshold parameter in main.bicep, with the
    guide's `default`, which main.bicepparam and deploy.sh read from the environment `variable`. A `metric`
    alert compares the metric's `aggregation` over the window with the threshold; a `query` alert (a ratio,
    which a metric alert cannot compute) runs KQL on customMetrics.
    """

    rule: str
    kind: Literal["metric", "query"]
    metrics: tuple[Metric, ...]
    parameter: str
    default: int
    variable: str
    aggregation: str
    meaning: str


ALERTS: tuple[Alert, ...] = (
    Alert(
        "latencyAlert",
        "metric",
        (IMAGE_DURATION,),
        "latencyAlertSeconds",
        90,
        "NOISETT_ALERT_LATENCY_SECONDS",
        "Average",
        "Images take longer than the threshold on average (the guide's target is under 60 s).",
    ),
    Alert(
        "errorRateAlert",
        "query",
        (ERRORS, REQUESTS),
        "errorRateAlertPercent",
        10,
        "NOISETT_ALERT_ERROR_RATE_PERCENT",
        "Maximum",
        "More than the threshold's percent of generation requests failed (the guide's target is under 5 %).",
    ),
    Alert(
        "gpuUtilizationAlert",
        "metric",
        (GPU_UTILIZATION,),
        "gpuUtilizationAlertPercent",
        90,
        "NOISETT_ALERT_GPU_PERCENT",
        "Average",
        "The GPU was busier than the threshold for the whole window: requests are queueing behind it.",
    ),
    Alert(
        "coldStartAlert",
        "metric",
        (COLD_START,),
        "coldStartAlertSeconds",
        120,
        "NOISETT_ALERT_COLD_START_SECONDS",
        "Maximum",
        "A replica took longer than the threshold from its start to a ready model (target: under 90 s).",
    ),
)
