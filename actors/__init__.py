"""Ray roles around the aits library: one Collector per orbit, one Learner.

Plain classes: the driver wraps them with ``ray.remote`` or runs them in-process.
"""
from .collector import Collector
from .learner import Learner

__all__ = ["Collector", "Learner"]
