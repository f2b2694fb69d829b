# Copyright (c) mailproto authors. See LICENSE for details.
"""
Run C{twistd mailrelay} in a process of its own, for tests (and the
benchmarks) that need the real daemon.

When mailproto is installed, C{twistd} finds the plugin in Twisted's
C{twisted/plugins} directory.  When it is imported from a source tree,
the plugin module is still in C{twistd_plugins/}: it is linked into a
C{twisted/plugins} directory under C{scratch}, which goes on the child's
C{PYTHONPATH} (Twisted looks for plugins in every C{twisted/plugins}
directory on the path).
"""

from __future__ import annotations

import os
import sys

import mailproto

TWISTD = "from twisted.scripts.twistd import run; run()"


def _pluginInstalled() -> bool:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    return any(getattr(p, "tapname", None) == "mailrelay" for p in getPlugins(IServiceMaker))


def relayCommand(arguments: list[str], scratch: str, twistdArguments: list[str] = ()) -> tuple[list[str], dict[str, str]]:
    """
    @param arguments: the options of C{mailrelay}.
    @param scratch: a directory for the plugin link, if one is needed.
    @param twistdArguments: more options of C{twistd} itself (before
        C{mailrelay}), as C{--uid}.
    @return: the command line and environment of a C{twistd -n mailrelay}
        that runs in the foreground and logs to its standard output.  It
        runs as one process (C{--workers 1}) unless C{arguments} say how
        many workers: the tests of several processes ask for them.
    """
    if not any(a == "--workers" or a.startswith("--workers=") for a in arguments):
        arguments = ["--workers", "1", *arguments]
    env = dict(os.environ)
    package = os.path.dirname(os.path.dirname(os.path.abspath(mailproto.__file__)))
    path = [package]
    if not _pluginInstalled():
        source = os.path.join(os.environ.get("MAILPROTO_SOURCE", package), "twistd_plugins", "mailproto_mailrelay.py")
        plugins = os.path.join(scratch, "plugin-path", "twisted", "plugins")
        os.makedirs(plugins, exist_ok=True)
        link = os.path.join(plugins, "mailproto_mailrelay.py")
        if not os.path.exists(link):
            os.symlink(source, link)
        path.append(os.path.join(scratch, "plugin-path"))
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    argv = [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "--logfile=-", *twistdArguments, "mailrelay", *arguments]
    return argv, env
