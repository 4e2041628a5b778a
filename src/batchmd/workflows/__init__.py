"""The run vocabulary shared by the command line, pipeline files and campaigns.

- :mod:`batchmd.workflows.stages`: stage specs (``{"method": "fire", "cell": "full", ...}``):
  their keys, units, checks and the dynamics stage each builds.
- :mod:`batchmd.workflows.models`: model specs (``{"name": "sevennet-0"}``,
  ``{"name": "lj", "sigma": 3.405, ...}``): the model registry's names and the
  Lennard-Jones parameters, checked and built.
- :mod:`batchmd.workflows.pipeline`: the pipeline TOML file (``batchmd pipeline``, and
  ``batchmd campaign run`` on the same file).

``batchmd relax``/``md``/``pipeline`` (``batchmd.cli``) and campaign configs
(:mod:`batchmd.campaign.config`) are thin users of these modules, so a stage or a model
means the same thing, with the same one-line errors (:class:`SpecError`), wherever it is
written. Nothing heavy is imported here: torch, Warp and the model packages are imported
only when a stage or a model is built.
"""

from batchmd.workflows.errors import SpecError

__all__ = ["SpecError"]
