"""Reports: grouped tables, plots and one HTML page, built from result records.

records.py reads a results folder; build.py turns records (plus the model cards' compute
and, on demand, published.py's numbers) into one Report; layout.py, markdown.py, html.py
and plots.py render it; write.py writes the files atomically.
"""
