"""Compare finished runner sweeps: load run folders, plot, tabulate and write a report.

Reads run directories only (never imports the training code); `python -m neurons.compare`.
"""

from .load import load_runs
from .plots import final_metric, learning_curves
from .report import write_report
from .tables import summary_table

__all__ = ["final_metric", "learning_curves", "load_runs", "summary_table", "write_report"]
