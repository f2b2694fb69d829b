# -*- test-case-name: mailproto.test.test_sink -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
C{python -m mailproto}: the C{mailproto} command (see L{mailproto._commandline._cli}).
"""

from mailproto._commandline._cli import main

if __name__ == "__main__":
    main()
