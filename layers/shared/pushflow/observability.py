"""The one place that owns Logger, Tracer and Metrics.

Service name, namespace and level come from the POWERTOOLS_* variables that
template.yaml sets in Globals, so every function logs and measures alike.
"""

from __future__ import annotations

import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
tracer = Tracer()
metrics = Metrics()

# Most tasks publish no metric of their own; flushing none is not a problem.
warnings.filterwarnings("ignore", message="No application metrics to publish")

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
