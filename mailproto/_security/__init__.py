# Copyright (c) mailproto authors. See LICENSE for details.
"""
Outbound security: MTA-STS (RFC 8461), DANE (RFC 7672), TLS reporting
(RFC 8460) and the per-destination TLS policy the relay applies.  Private;
the public names are in L{mailproto.security}.
"""
