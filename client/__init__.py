"""Score a CSV of breast-cancer rows with a running service: `python -m client FILE.csv`.

The CSV is read as training reads it (training/dataset.py): the public WDBC layout as distributed
(`concave points_mean` headers, a trailing empty column, `id` and `diagnosis` columns) or the
project's own. Rows go to POST /predict_batch in batches, several at a time; the answers come back as
a CSV with one line per input row, and rows the service refused are listed by row and field.
"""
