"""MLflow, and only here: no other package imports mlflow.

uri (where runs go; imports no MLflow, so cheap to call), client, labels (a CV
run's tags, name and comparability key; no MLflow either), cv_run (the CV
parent run and its fold runs, as a training callback), study_run (a sweep's
study run), artifacts (bundles and figures logged to a run), runs_table
(finished CV runs read back and grouped by comparability: ``esc-sweep runs``).
"""
