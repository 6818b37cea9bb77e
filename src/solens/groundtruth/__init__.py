"""solens.groundtruth: scoring neuron descriptions against the synthetic world's ground truth.

- ``concepts``: which world concepts each scene shows, which concepts a neuron's top images
  are enriched in (hypergeometric test, Benjamini-Hochberg), and their groups (polysemy);
- ``matching``: whether a description term names a concept;
- ``baselines``: the direct-effect, CLIP-Dissect-style and chance descriptions;
- ``score``: hit rates and polysemy of a run's descriptions (``score_run``).

Definitions: ``docs/scoring.md`` and the docstring of ``solens.groundtruth.score``.
"""
