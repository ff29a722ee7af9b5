"""placeholder"""
from cytogen.workflows.statcell_perturbation import perturbation  # noqa: F401
