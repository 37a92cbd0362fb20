"""Metrics we own, in one room: a functional core and thin torchmetrics classes over it.

- ``functional``: arrays/tensors in, plain values out (max error, per-level MAE, spread, oracle reference,
  threshold counts and Jaccard); the guard, figures and data room call it directly.
- ``regression`` / ``segmentation``: ``Metric`` classes whose states sync over DDP ranks.
- ``collections``: each task's ``MetricCollection`` per stage (``stage_metrics``) and ``log_stage``, the one way
  both tasks log them.
- ``calibration`` / ``predictions``: the density calibration verdict and the per-image prediction table.
"""
