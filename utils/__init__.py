"""Everything that is neither the networks nor the data, in rooms that import only downwards.

- The floor, the modules directly here, imports nothing of ``model/`` or ``dataset/``:
  ``config`` (the typed config and its checks), ``errors`` (the one-line errors and the
  overwrite guard), ``checkpoint`` (checkpoint files and the training checkpoint's format),
  ``logger``, ``distributed``, ``provenance`` (where a result came from, the results writer),
  ``readme`` and ``protocols`` (generated docs blocks). ``losses`` and ``schedules`` hold the
  method's terms and import nothing of the repository at all.
- ``evaluation/``: scoring a G on the val split (metrics, inference, reports, prediction files
  and the one evaluation prelude).
- ``analysis/``: feature-space analysis, figures and prediction panels.
- ``training/``: the state a setup builds, the shared loop, its logging, optimizers, CUDA graph
  and command line.

``tests/test_layout.py`` keeps the levels (floor < dataset < model < evaluation < analysis <
training < scripts) and checks that the import graph has no circle.
"""
