"""Drawing only: charts, training curves, comparison strips and the HTML report.
It reads comparisons and run logs; it never scores or trains."""
