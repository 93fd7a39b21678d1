"""Feature-space analysis of trained checkpoints, its figures, and prediction panels."""
