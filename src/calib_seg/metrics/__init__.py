"""Metrics we own: functional cores (numpy in, plain numbers out) and the glue that feeds them a run's predictions."""
