"""Figures and reports."""
from .layerwise import QUANTITIES, plot_layerwise, run_label, split_protocols
from .study import (
    CORRELATED_STATUSES,
    MEASURABLE_STATUSES,
    STATUSES,
    SRRVerdict,
    Stratum,
    StudyReport,
    headline,
    markdown_correlation_table,
    srr_led,
    srr_verdict,
    write_study_report,
)

__all__ = ["CORRELATED_STATUSES", "QUANTITIES", "plot_layerwise", "run_label", "split_protocols",
           "MEASURABLE_STATUSES", "STATUSES", "SRRVerdict", "Stratum", "StudyReport", "headline",
           "markdown_correlation_table", "srr_led", "srr_verdict", "write_study_report"]
