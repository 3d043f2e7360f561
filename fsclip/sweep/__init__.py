"""Sweeps: a grid of methods x datasets x shots x seeds run as the method scripts run them.

``grid`` expands a grid into ``train.py`` runs and folders (the scripts' layout), ``cli`` applies
the rerun rule (:mod:`fsclip.runs`) and hands the rest to local workers (``local``) or to a Slurm
job array through submitit (``slurm``); ``execute`` runs one of them and reports how it ended.
Command line: ``fsclip-sweep`` / ``python -m fsclip.sweep`` (``-h`` for the flags and a grid file).
"""
