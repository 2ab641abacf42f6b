"""The classic toolbox around training: ensembles and calibration (``ensemble.py``). Cross-validation
splits are data (``archlab/data/splits.py``); ``archlab cv`` is ``archlab/search/cv.py``."""
