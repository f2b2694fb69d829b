# Copyright (c) mailproto authors. See LICENSE for details.
"""
The mail relay daemon, C{twistd mailrelay}: its service and options, its
control socket, logs, metrics, PROXY protocol, configuration file, start-up
and privileges.  Private; the library does not import it.
"""
