"""Compare finished runner sweeps: load run folders, plot, tabulate and write a report.

Reads run directories only (never imports the training code); `python -m neurons.compare`.
"""

from .load import load_runs
from .plots import final_metric, forest_plot, learning_curves
from .report import make_report, write_report
from .saved import load_report
from .stats import compare_to_baseline, variant_stats
from .tables import summary_table

__all__ = [
    "compare_to_baseline",
    "final_metric",
    "forest_plot",
    "learning_curves",
    "load_report",
    "load_runs",
    "make_report",
    "summary_table",
    "variant_stats",
    "write_report",
]
