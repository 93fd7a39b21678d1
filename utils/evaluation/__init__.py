"""Scoring a trained G on the target val split: metrics, inference, reports, prediction files
and the one evaluation prelude (``prepare``)."""
