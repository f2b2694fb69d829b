# Copyright (c) mailproto authors. See LICENSE for details.
"""
Sphinx configuration of mailproto's documentation.

The narrative pages are Sphinx; the API reference is made by pydoctor from
the epytext docstrings, at the start of the HTML build (the extension
C{pydoctor.sphinx_ext.build_apidocs}), into C{api/} of the output.  Its
object inventory is given to intersphinx, so that the pages can link to
the API with C{:py:class:} and friends.

Build it, warnings as errors, with::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

(or C{tox -e docs}).  No network is needed.
"""

import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
source = here.parent

# mailproto/__init__.py imports nothing: reading the version from the tree
# does not need the package (or Twisted) installed.
sys.path.insert(0, str(source))
from mailproto import __version__  # noqa: E402

project = "mailproto"
author = "mailproto authors"
copyright = "mailproto authors"
version = ".".join(__version__.split(".")[:2])
release = __version__

extensions = [
    "sphinx.ext.intersphinx",
    "pydoctor.sphinx_ext.build_apidocs",
]

root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"mailproto {release}"
html_theme_options = {"description": "SMTP, ESMTP and LMTP for Twisted, and a mail relay"}

# Links from the pages to the API reference, through pydoctor's inventory
# (the extension adds it to intersphinx_mapping).  There are no links to
# other projects' documentation: the build must work without a network.
intersphinx_mapping = {}
pydoctor_url_path = "api/"
pydoctor_args = [
    "--project-name=mailproto",
    f"--project-version={release}",
    f"--project-base-dir={source}",
    "--docformat=epytext",
    "--html-output={outdir}/api",
    # The tests are not part of the API.
    "--privacy=HIDDEN:mailproto.test",
    "--warnings-as-errors",
    str(source / "mailproto"),
]

# Every reference must resolve (sphinx-build -n makes this an error too).
nitpicky = True
