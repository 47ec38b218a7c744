"""Figures and reports."""
from .layerwise import QUANTITIES, plot_layerwise, run_label, split_protocols
from .study import (
    CORRELATED_STATUSES,
    MEASURABLE_STATUSES,
    STATUSES,
    SimpsonFlag,
    SRRVerdict,
    Stratum,
    StudyReport,
    StudyTables,
    headline,
    markdown_correlation_table,
    srr_led,
    srr_verdict,
    study_tables,
    write_study_report,
)
from .tidy_csv import csv_text, write_csv

__all__ = ["CORRELATED_STATUSES", "QUANTITIES", "plot_layerwise", "run_label", "split_protocols",
           "MEASURABLE_STATUSES", "STATUSES", "SimpsonFlag", "SRRVerdict", "Stratum", "StudyReport", "StudyTables",
           "csv_text", "headline", "markdown_correlation_table", "srr_led", "srr_verdict",
           "study_tables", "write_csv", "write_study_report"]
