"""Search: hyperparameter tuning on Optuna (``archlab tune``: ``tune.py``, pictures in ``plots.py``).

This package sits above the runner (a trial is an ordinary run). Architecture search that trains as
a loop lives with the loops: DARTS is ``archlab/train/darts.py`` over the supernet in
``archlab/models/search/``.
"""
