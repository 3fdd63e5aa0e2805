"""Feature statistics, the SQLite feature store, static dashboards and the Neuronpedia export.

    compute_feature_stats(lm, sae, source, StatsConfig(...), out="features.sqlite") -> FeatureStats
    FeatureStore(path).get(i) / .summaries(sort="density")
    build_dashboard(lm, sae, source, out_dir, config) -> DashboardResult
    export_neuronpedia(store, out_dir) -> ExportResult
"""
from __future__ import annotations

from .dashboard import DashboardResult, build_dashboard, write_dashboard
from .neuronpedia import export_neuronpedia
from .stats import FeatureRecord, FeatureStats, StatsAccumulator, StatsConfig, compute_feature_stats
from .store import STORE_FILE, FeatureStore, FeatureSummary, write_store

__all__ = ["DashboardResult", "build_dashboard", "write_dashboard", "export_neuronpedia", "FeatureRecord",
           "FeatureStats", "StatsAccumulator", "StatsConfig", "compute_feature_stats", "STORE_FILE", "FeatureStore",
           "FeatureSummary", "write_store"]
