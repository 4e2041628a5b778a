"""Sphinx configuration of the batchmd documentation.

Build (from the repository root)::

    python -m sphinx -b html docs docs/_build/html

Every script in ``examples/`` is executed by Sphinx-Gallery (``filename_pattern``
matches all of them, not only ``plot_*``). Skip execution with ``-D plot_gallery=0``.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))
os.environ.setdefault("MPLBACKEND", "Agg")

import batchmd  # noqa: E402

project = "batchmd"
author = "batchmd contributors"
copyright = "2026, batchmd contributors"
version = release = batchmd.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5",
                    "auto_examples/*.pickle", "sg_execution_times.rst"]
templates_path = []
html_static_path = []
# A theme made for API documentation: a wide content column (signatures, shapes and code blocks
# are not cut off), a sidebar with the page's sections. ``furo`` is in the [docs] and [test]
# extras; without it (an older environment) alabaster gets a wide, fluid page instead.
try:
    import furo  # noqa: F401
except ImportError:
    html_theme = "alabaster"
    html_theme_options = {"page_width": "min(96%, 1400px)", "sidebar_width": "260px", "body_max_width": "none",
                          "fixed_sidebar": True}
else:
    html_theme = "furo"
    html_theme_options = {"sidebar_hide_name": False, "navigation_with_keys": True}

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # types are in the numpy-style docstrings
autosummary_generate = False
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# Cross-references to outside projects (torch, ase, numpy, warp, the standard library) are
# not resolved (no network at build time); everything inside batchmd must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|ase|np|numpy|wp|warp|os|pathlib|argparse|typing|collections)(\..*)?"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|callable|object|sequence|iterable|file-like|None|"
               r"optional|default|mapping|Exception|RuntimeError|Enum|NamedTuple|type|self|array-like)"),
    (r"py:.*", r".*\[.*|.*\].*|[A-Z0-9+]{1,4}|[a-z]"),  # shapes such as [N, 3]
    (r"py:.*", r"(tensor-like|os\.PathLike|path-like|dtype|device|Atoms|Tensor)"),
    (r"py:.*", r".*(or|of) .*"),     # "float or torch.Tensor", "list of Atoms"
    (r"py:.*", r"\{.*|.*\}|\".*\"|'.*'"),  # value sets {"max", "min"}
]

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r".*\.py$",      # execute every example, not only plot_*.py
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}
