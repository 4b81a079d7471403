"""Prefect flows, deployments, schedules and the ``cattune`` command line.

Nothing here imports Prefect at package import time, so ``cattune train`` runs on a training box
that has only ``cattune[train]`` installed.
"""
