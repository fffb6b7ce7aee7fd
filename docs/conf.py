"""Sphinx configuration: API reference from the docstrings, guides in Markdown."""

from __future__ import annotations

project = "optiquant"
author = "optiquant developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing", "myst.header"]
html_theme = "alabaster"
nitpicky = False
