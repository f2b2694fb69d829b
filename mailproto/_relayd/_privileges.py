# -*- test-case-name: mailproto.test.test_privileges -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Running the relay as an unprivileged user: C{twistd --uid USER --gid
GROUP mailrelay ...}, started as root so that it can bind port 25.

twistd makes the service as root, binds its ports (the privileged start),
then switches to the user and starts it.  So that the relay can still
write its spool after the switch, the privileged start gives the spool to
the user it will run as (L{giveSpool}): the spool directory, its
C{tmp/}, C{queue/} and C{corrupt/}, the files in them and the lock file.
A spool that user could not reach (a parent directory it may not enter)
or that cannot be given to it (a file system that refuses C{chown}) is a
start-up error that names the path and the user.

With C{--workers N}, the workers are started after the switch, by the
relay's user: L{checkWorkersCanRun} makes sure, while still root, that
this user may run this Python and import mailproto (a Python installed in
C{/root}, say, is not).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys

# The queue's, the MTA-STS policy cache's and the TLS reports' (mailproto._security).
_SUBDIRECTORIES = ("tmp", "queue", "corrupt", "mta-sts", "tls-reports", os.path.join("tls-reports", "corrupt"))


class SpoolNotUsable(Exception):
    """
    The user the relay will run as could not use the spool.
    """


class WorkersCannotRun(Exception):
    """
    The user the relay will run as could not start its workers.
    """


def checkWorkersCanRun(uid: int, gid: int, run=subprocess.run) -> None:
    """
    Check that the user and group the relay will run as can start a
    worker: run this Python as them, importing the worker's module, as
    the relay will once it has switched.

    @param run: L{subprocess.run}, or a replacement for tests.
    @raise WorkersCannotRun: if it fails, with the last line it wrote.
    """
    argv = [sys.executable, "-c", "import mailproto._relayd._worker"]
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        groups = []
    try:
        result = run(argv, user=uid, group=gid, extra_groups=groups, cwd="/", capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        why = getattr(e, "strerror", None) or str(e)
    else:
        if result.returncode == 0:
            return
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit status {result.returncode}"
    raise WorkersCannotRun(
        f"the workers cannot start as {_userName(uid, gid)}: {sys.executable}: {why} "
        "(make Python and mailproto readable by that user, or use --workers 1)"
    )


def runAs(options) -> tuple[int, int] | None:
    """
    The user and group twistd will switch to, if it will: the C{--uid} and
    C{--gid} of the C{twistd} command line (the parent of the relay's
    options) while the process runs as root.

    @param options: the relay's options.
    @return: C{(uid, gid)}, or C{None} if there is no switch to come.
    """
    parent = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None or uid == 0:
        return None
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


def _userName(uid: int, gid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def _checkReachable(directory: str, uid: int, gid: int) -> None:
    """
    @raise SpoolNotUsable: if a directory above C{directory} may not be
        entered by C{uid}/C{gid}.
    """
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}
    path = os.path.abspath(directory)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
        st = os.stat(path)
        if st.st_uid == uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            raise SpoolNotUsable(f"the spool {directory} cannot be reached by {_userName(uid, gid)}: it may not enter {path}")


def giveSpool(directory: str, lockFile: str, uid: int, gid: int) -> int:
    """
    Give the spool to the user the relay will run as.

    @param directory: the spool.
    @param lockFile: its lock file.
    @return: how many files and directories changed owner.
    @raise SpoolNotUsable: if the user could not reach it, or it cannot be
        given to the user.
    """
    _checkReachable(directory, uid, gid)
    paths = [directory, lockFile]
    for name in _SUBDIRECTORIES:
        sub = os.path.join(directory, name)
        paths.append(sub)
        try:
            paths.extend(os.path.join(sub, entry) for entry in os.listdir(sub))
        except FileNotFoundError:
            continue
    changed = 0
    for path in paths:
        try:
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
                changed += 1
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SpoolNotUsable(f"the spool {directory} cannot be given to {_userName(uid, gid)}: {path}: {e.strerror}") from None
    return changed
