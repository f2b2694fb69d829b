# Copyright (c) mailproto authors. See LICENSE for details.
"""
The C{mailproto} command (C{python -m mailproto}): C{send}, C{sink},
C{queue}, C{sendmail}, C{adduser}.  Private; the library does not import
it.
"""
