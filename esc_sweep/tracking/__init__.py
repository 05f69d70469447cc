"""MLflow, and only here: no other package imports mlflow.

uri (where runs go; imports no MLflow, so cheap to call), client, cv_run (the
CV parent run and its fold runs, as a training callback), study_run (a sweep's
study run), artifacts (bundles and figures logged to a run).
"""
