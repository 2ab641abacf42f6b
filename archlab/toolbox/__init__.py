"""The classic toolbox around training: ensembles and calibration (``ensemble.py``), bagging
(``bagging.py``), snapshot ensembles (``snapshot.py``), AdaBoost SAMME with neural weak learners
(``adaboost.py``, on the ``weighted_supervised`` loop) and stacking with a held-out meta-learner
(``stacking.py``). Cross-validation splits are data (``archlab/data/splits.py``); ``archlab cv`` is
``archlab/search/cv.py``."""
