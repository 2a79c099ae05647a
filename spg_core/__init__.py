"""SPG Studio engine: Sparse-Projected Guides for zero-shot anomaly detection.

Data flows one way: images -> tokens -> SAE codes -> guides -> maps -> metrics.
"""

__version__ = "0.1.0"
