"""The sweep report: data (tables + in-memory Optuna study), plots, maps, HTML."""
