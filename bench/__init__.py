"""metabench: a benchmark suite for few-shot meta-learning.

Import package layout (the folders bench/, algorithms/ and datasets/ of the repository, mapped in pyproject.toml): :mod:`metabench` is the harness (configuration,
runner, evaluation, statistics, command line), :mod:`metabench.algorithms` the learners and
backbones, :mod:`metabench.datasets` the data loaders, splits and episode sampler.
"""

__version__ = "0.1.0"
