"""`osora report`: MLflow runs compared — loss curves, throughput, cost against evaluation
scores — as one HTML file or Markdown with PNGs.

    runs.py    select runs from the tracking store, read params, metrics, tags and curves
    evals.py   evaluation scores and the training runs each evaluation is linked to
    tables.py  the logged numbers as tables
    plots.py   matplotlib figures
    build.py   runs → a Report of tables and plots
    render.py  a Report → .html or .md
"""
