"""Telemetry: stage timings (stats) and the periodic telemetry message (reporter)."""

from .stats import STAGES, StageStats, percentiles

__all__ = ["STAGES", "StageStats", "percentiles"]
