# -*- test-case-name: mailproto.test.test_testing -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
Helpers for testing code that sends or receives mail with mailproto, in
memory, without sockets or real time.

  - L{MemoryDelivery} is an L{IMessageDelivery} that accepts (or refuses)
    senders and recipients and keeps every message it receives, as
    L{DeliveredMessage} records.
  - L{connectInMemory} connects a server protocol and a client protocol
    through in-memory transports and returns the pump that moves bytes
    between them.
  - L{FakeResolver} is an C{IResolver} that answers MX, A, AAAA and
    CNAME queries from dictionaries, like a real resolver (answers,
    NXDOMAIN, chosen failures such as SERVFAIL or a time-out), and records
    the queries it gets: for tests of mail routing
    (L{mailproto.relaymanager.MXCalculator}) without a DNS server.
  - L{MemoryQueue} is the relay's queue without a disk: messages and their
    delivery state in memory, for tests of the relay
    (L{mailproto.relay.QueueDeliveryFactory},
    L{mailproto.relaymanager.SmartHostESMTPRelayingManager}).
  - L{ScriptedSMTPServer} (and L{ScriptedSMTPFactory} for a socket) is an
    SMTP server that answers each command as a script says -- a wrong
    reply, extra lines, garbage, a trickle, nothing, a dropped connection,
    a reply worked out from the command, real TLS after STARTTLS
    (L{StartTLS}) or a TLS handshake that fails (L{BrokenTLS}) -- and
    records the commands and messages it received: for tests of how a
    client copes with servers that misbehave.

A test of an application's own client against a mailproto server::

    from mailproto.smtp import ESMTPFactory
    from mailproto.testing import MemoryDelivery, connectInMemory

    delivery = MemoryDelivery()
    server = ESMTPFactory(delivery=delivery, domain=b"mx.example").buildProtocol(None)
    pump = connectInMemory(server, myClientProtocol)
    pump.flush()
    [message] = delivery.messages
    assert bytes(message.recipient) == b"rcpt@example.com"

A test of routing::

    from twisted.internet.task import Clock
    from mailproto.relaymanager import MXCalculator
    from mailproto.testing import FakeResolver

    resolver = FakeResolver(
        mx={"example.com": [(10, "mx1.example.com"), (20, "mx2.example.com")]},
        a={"mx1.example.com": ["192.0.2.1"]},
        aaaa={"mx2.example.com": ["2001:db8::2"]},
    )
    calculator = MXCalculator(resolver=resolver, clock=Clock())
    destinations = []
    calculator.getRoute("example.com").addCallback(destinations.append)
    [destination] = destinations
    assert [c.host for c in destination] == ["mx1.example.com", "mx2.example.com"]
    assert resolver.queries[0] == ("example.com", "MX")
"""

from __future__ import annotations

import io

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import ServerFactory
from twisted.names import common, dns, error
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim
from zope.interface import implementer

from mailproto._address import Address, User
from mailproto._errors import SMTPBadRcpt, SMTPBadSender
from mailproto._queue import Envelope, QueueView
from mailproto.interfaces import IMessageDelivery, IMessageStream

__all__ = [
    "BrokenTLS",
    "DeliveredMessage",
    "Drop",
    "FakeResolver",
    "MemoryDelivery",
    "MemoryMessage",
    "MemoryQueue",
    "NameResolver",
    "SCRIPT_DEFAULTS",
    "ScriptedSMTPFactory",
    "ScriptedSMTPServer",
    "Stall",
    "StartTLS",
    "TLS_HANDSHAKE_FAILURE",
    "Trickle",
    "connectInMemory",
]


class DeliveredMessage:
    """
    One message as a server delivered it, for one recipient.

    @ivar helo: the client's C{(HELO argument, address)}.
    @ivar sender: the envelope sender.
    @type sender: L{Address}
    @ivar recipient: the envelope recipient.
    @type recipient: L{Address}
    @ivar mail: the C{MAIL} command with its ESMTP parameters (SIZE, BODY,
        SMTPUTF8, RET, ENVID, ...).
    @type mail: L{mailproto.wire.MailFrom} or C{None}
    @ivar rcpt: the C{RCPT} command with its ESMTP parameters (NOTIFY,
        ORCPT).
    @type rcpt: L{mailproto.wire.RcptTo} or C{None}
    @ivar data: the message as received: headers and body, lines ending in
        CRLF, dot-unstuffed, with the trace header the server added, if
        any.
    @type data: C{bytes}
    """

    def __init__(self, user: User, data: bytes) -> None:
        self.helo = user.helo
        self.sender = user.orig
        self.recipient = user.dest
        self.mail = user.mail
        self.rcpt = user.rcpt
        self.data = data

    def __repr__(self) -> str:
        return f"<DeliveredMessage from {str(self.sender)!r} to {str(self.recipient)!r}, {len(self.data)} octets>"


@implementer(IMessageStream)
class MemoryMessage:
    """
    A message being received by a L{MemoryDelivery}.

    @ivar chunks: the data received so far.
    @ivar lost: whether the message was abandoned.
    """

    def __init__(self, delivery: MemoryDelivery, user: User) -> None:
        self.delivery = delivery
        self.user = user
        self.chunks: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def lineReceived(self, line: bytes) -> None:
        self.chunks.append(line + b"\r\n")

    def eomReceived(self) -> defer.Deferred:
        if self.delivery.failDelivery is not None:
            return defer.fail(self.delivery.failDelivery)
        self.delivery.messages.append(DeliveredMessage(self.user, b"".join(self.chunks)))
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lost = True
        self.delivery.lost.append(self)


@implementer(IMessageDelivery)
class MemoryDelivery:
    """
    An L{IMessageDelivery} that keeps messages in memory.

    By default it accepts every sender and recipient and adds no trace
    header.

    @ivar messages: the messages delivered, one per recipient, in order.
    @type messages: C{list} of L{DeliveredMessage}
    @ivar lost: the L{MemoryMessage}s abandoned before their end.
    @ivar senders: the senders validated, in order, as L{Address}es.
    @ivar refuseSenders: addresses (C{bytes}, C{b"local@domain"}) to refuse
        with C{550 5.7.1}.
    @ivar refuseRecipients: addresses to refuse with C{550 5.1.1}.
    @ivar failDelivery: an exception with which every message fails at its
        end, or C{None}.
    @ivar receivedHeaderText: the trace header to add, or C{None}.
    """

    def __init__(
        self,
        refuseSenders=(),
        refuseRecipients=(),
        failDelivery: Exception | None = None,
        receivedHeader: bytes | None = None,
    ) -> None:
        """
        @param refuseSenders: see L{MemoryDelivery.refuseSenders}.
        @param refuseRecipients: see L{MemoryDelivery.refuseRecipients}.
        @param failDelivery: see L{MemoryDelivery.failDelivery}.
        @param receivedHeader: see L{MemoryDelivery.receivedHeaderText}.
        """
        self.messages: list[DeliveredMessage] = []
        self.lost: list[MemoryMessage] = []
        self.senders: list[Address] = []
        self.refuseSenders = {_asBytes(a) for a in refuseSenders}
        self.refuseRecipients = {_asBytes(a) for a in refuseRecipients}
        self.failDelivery = failDelivery
        self.receivedHeaderText = receivedHeader

    def receivedHeader(self, helo, origin, recipients):
        return self.receivedHeaderText

    def validateFrom(self, helo, origin):
        if bytes(origin) in self.refuseSenders:
            raise SMTPBadSender(origin)
        self.senders.append(origin)
        return origin

    def validateTo(self, user):
        if bytes(user.dest) in self.refuseRecipients:
            raise SMTPBadRcpt(user)
        return lambda: MemoryMessage(self, user)


def _asBytes(address) -> bytes:
    return address.encode("utf-8") if isinstance(address, str) else bytes(address)


def connectInMemory(server, client, clock=None, serverAddress=None, clientAddress=None) -> iosim.IOPump:
    """
    Connect two protocols through in-memory transports.

    @param server: the server protocol (for example from
        C{factory.buildProtocol(None)}).
    @param client: the client protocol.
    @param clock: the clock the pump advances a little each time it moves
        data; a new C{MemoryReactorClock} if C{None}.
    @param serverAddress: the server's address as both sides see it;
        C{127.0.0.1:25} if C{None}.
    @param clientAddress: the client's address; C{127.0.0.1:54321} if
        C{None}.
    @return: the pump: C{pump.flush()} moves bytes both ways until neither
        side has anything more to say.
    @rtype: C{twisted.test.iosim.IOPump}
    """
    serverAddress = serverAddress or IPv4Address("TCP", "127.0.0.1", 25)
    clientAddress = clientAddress or IPv4Address("TCP", "127.0.0.1", 54321)
    serverTransport = iosim.FakeTransport(server, isServer=True, hostAddress=serverAddress, peerAddress=clientAddress)
    clientTransport = iosim.FakeTransport(client, isServer=False, hostAddress=clientAddress, peerAddress=serverAddress)
    return iosim.connect(server, serverTransport, client, clientTransport, greet=True, clock=clock)


def _dnsName(name) -> str:
    """
    A name as L{FakeResolver} keeps it: C{str}, lower case, no final dot.
    """
    if isinstance(name, bytes):
        name = name.decode("ascii", "backslashreplace")
    name = name.lower()
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    return name


def _dnsType(recordType) -> int:
    """
    A record type given as a number (C{dns.MX}) or a name (C{"MX"}).
    """
    if isinstance(recordType, int):
        return recordType
    return dns.REV_TYPES[recordType.upper()]


@implementer(IHostnameResolver)
class NameResolver:
    """
    A host name resolver with fixed answers, for a memory reactor: give it
    as C{reactor.nameResolver}, and what resolves host names through the
    reactor (L{sendmail <mailproto.smtp.sendmail>}, C{HostnameEndpoint})
    connects to the addresses given here.  (Twisted's C{MemoryReactor}
    resolves every name to C{127.0.0.1}.)

    @ivar names: the addresses of each name, IPv4 and IPv6, in order; a
        name not here has none.
    @ivar hold: whether answers wait for L{release}, to test what happens
        while a name is being resolved.
    """

    def __init__(self, names: dict[str, list[str]], hold: bool = False) -> None:
        self.names = names
        self.hold = hold
        self._pending: list = []

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        """
        Resolve C{hostName} (see C{IHostnameResolver}).
        """

        def answer() -> None:
            resolutionReceiver.resolutionBegan(None)
            for address in self.names.get(hostName, []):
                kind = IPv6Address if ":" in address else IPv4Address
                if addressTypes is None or kind in addressTypes:
                    resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
            resolutionReceiver.resolutionComplete()

        if self.hold:
            self._pending.append(answer)
        else:
            answer()
        return resolutionReceiver

    def release(self) -> None:
        """
        Give the answers held so far.
        """
        pending, self._pending = self._pending, []
        for answer in pending:
            answer()


class FakeResolver(common.ResolverBase):
    """
    An C{IResolver} that answers
    from dictionaries, at once, without a network.

    It answers like a recursive resolver: a query of a name that has a CNAME
    record gets the CNAME records, one after the other, and the records of
    the name they lead to (stopping before a loop); a name that no
    dictionary knows gets NXDOMAIN (a failure with
    C{twisted.names.error.DNSNameError}), also at the end of a chain of
    CNAME records; a name known but without records of the type asked gets
    an empty answer.  Answers are C{(answers, authority, additional)}
    tuples of C{twisted.names.dns.RRHeader}s, the last two empty.

    Names are matched without regard to case or a final dot, and may be
    given as internationalized names (they are kept as A-labels).  The
    dictionaries are kept, normalized, in the attributes C{mx}, C{a},
    C{aaaa}, C{cname} and C{failures}, which a test may change between
    queries.

    @ivar queries: the queries received, in order, as C{(name, type)}
        pairs: the name lower case without a final dot, the type's name
        (C{"MX"}, C{"A"}, C{"AAAA"}, ...).
    @type queries: C{list} of C{tuple}
    @ivar followCNAMEs: whether answers hold the whole chain of CNAME
        records and the records at its end (like a recursive resolver), or
        only the first CNAME record (like an authoritative server of the
        alias alone), so that the client must ask again.
    """

    def __init__(self, mx=None, a=None, aaaa=None, cname=None, failures=None, followCNAMEs=True, ttl=3600) -> None:
        """
        @param mx: the MX records: domain -> list of C{(preference,
            exchange)}.  An exchange of C{"."} or C{""} is the root (a null
            MX, RFC 7505).  An empty list makes a domain that exists without
            MX records.
        @param a: the A records: host -> list of IPv4 addresses (C{str}).
        @param aaaa: the AAAA records: host -> list of IPv6 addresses.
        @param cname: the CNAME records: alias -> canonical name.
        @param failures: the queries that fail: C{(name, type)} -> the
            exception (an instance or a class), for example
            C{twisted.names.error.DNSServerError} for SERVFAIL or
            C{twisted.internet.defer.TimeoutError}.  The type is a name
            (C{"MX"}) or a number (C{dns.MX}).  A query fails also if a name
            its CNAME records lead to is listed with its type.
        @param followCNAMEs: see L{FakeResolver.followCNAMEs}.
        @param ttl: the TTL of every record.
        """
        super().__init__()
        self.mx = {_dnsName(k): [(int(p), _dnsName(x)) for p, x in v] for k, v in (mx or {}).items()}
        self.a = {_dnsName(k): list(v) for k, v in (a or {}).items()}
        self.aaaa = {_dnsName(k): list(v) for k, v in (aaaa or {}).items()}
        self.cname = {_dnsName(k): _dnsName(v) for k, v in (cname or {}).items()}
        self.failures = {(_dnsName(n), _dnsType(t)): e for (n, t), e in (failures or {}).items()}
        self.followCNAMEs = followCNAMEs
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []

    def _exists(self, name: str) -> bool:
        return any(name in table for table in (self.mx, self.a, self.aaaa, self.cname))

    def _records(self, name: str, recordType: int) -> list:
        """
        The records of one name and type (all types for C{ALL_RECORDS}), as
        C{dns.RRHeader}s.
        """
        owner = name.encode("ascii")
        payloads = []
        if recordType in (dns.MX, dns.ALL_RECORDS):
            payloads += [dns.Record_MX(p, x.encode("ascii"), ttl=self.ttl) for p, x in self.mx.get(name, ())]
        if recordType in (dns.A, dns.ALL_RECORDS):
            payloads += [dns.Record_A(address, ttl=self.ttl) for address in self.a.get(name, ())]
        if recordType in (dns.AAAA, dns.ALL_RECORDS):
            payloads += [dns.Record_AAAA(address, ttl=self.ttl) for address in self.aaaa.get(name, ())]
        if recordType in (dns.CNAME, dns.ALL_RECORDS) and name in self.cname:
            payloads.append(dns.Record_CNAME(self.cname[name].encode("ascii"), ttl=self.ttl))
        return [dns.RRHeader(owner, payload.TYPE, dns.IN, self.ttl, payload, auth=False) for payload in payloads]

    def _lookup(self, name, cls, recordType, timeout):
        """
        Answer one query; see the class's description.
        """
        current = _dnsName(name)
        self.queries.append((current, dns.QUERY_TYPES.get(recordType, str(recordType))))
        answers: list[dns.RRHeader] = []
        seen = {current}
        while True:
            failure = self.failures.get((current, recordType))
            if failure is not None:
                return defer.fail(failure() if isinstance(failure, type) else failure)
            target = self.cname.get(current)
            if target is None or recordType in (dns.CNAME, dns.ALL_RECORDS):
                if not self._exists(current):
                    return defer.fail(error.DNSNameError(f"NXDOMAIN: {current}"))
                answers += self._records(current, recordType)
                break
            answers += self._records(current, dns.CNAME)
            if not self.followCNAMEs or target in seen:
                break
            seen.add(target)
            current = target
        return defer.succeed((answers, [], []))



class _MemorySpoolFile:
    """
    A message being written into a L{MemoryQueue}.
    """

    def __init__(self, queue: MemoryQueue, envelope: Envelope) -> None:
        self.queue = queue
        self.envelope = envelope
        self._chunks: list[bytes] = []
        self._closed = False

    def write(self, data: bytes) -> None:
        self._chunks.append(bytes(data))

    @property
    def size(self) -> int:
        return sum(map(len, self._chunks))

    def commit(self) -> defer.Deferred:
        self._closed = True
        if self.queue.failWrites:
            return defer.fail(OSError("MemoryQueue.failWrites is set"))
        self.envelope.size = self.size
        self.queue.messages[self.envelope.id] = b"".join(self._chunks)
        self.queue.states[self.envelope.id] = self.envelope.state()
        return defer.succeed(self.queue._added(self.envelope))

    def abort(self) -> None:
        self._closed = True
        self._chunks = []


class MemoryQueue(QueueView):
    """
    The relay's queue, in memory: what L{mailproto.relaymanager.Queue}
    does, without files, threads or C{fsync}.  Commits and updates succeed
    at once (or fail, with L{failWrites}).

    @ivar messages: each queued message's data, by queue id.
    @ivar states: each queued message's last written delivery state (as
        L{Envelope.state} gives it), by queue id: what a restart would
        find.
    @ivar removed: the ids of the messages taken out of the queue, in
        order.
    @ivar failWrites: make commits and updates fail, as a full disk would.
    """

    def __init__(self) -> None:
        QueueView.__init__(self)
        self.messages: dict[str, bytes] = {}
        self.states: dict[str, dict] = {}
        self.removed: list[str] = []
        self.failWrites = False

    def recover(self) -> dict[str, int]:
        return {"queued": len(self._envelopes), "removed": 0, "corrupt": 0}

    readDirectory = recover

    def getPath(self, queueID: str) -> str:
        return queueID

    def newMessage(self, envelope: Envelope) -> _MemorySpoolFile:
        return _MemorySpoolFile(self, envelope)

    def openMessage(self, queueID: str):
        return io.BytesIO(self.messages[queueID])

    def update(self, envelope: Envelope) -> defer.Deferred:
        if self.failWrites:
            return defer.fail(OSError("MemoryQueue.failWrites is set"))
        self.states[envelope.id] = envelope.state()
        return defer.succeed(None)

    def remove(self, queueID: str) -> defer.Deferred:
        self._forget(queueID)
        self.messages.pop(queueID, None)
        self.states.pop(queueID, None)
        self.removed.append(queueID)
        return defer.succeed(None)


# -- a misbehaving server on demand -------------------------------------------------


class Drop:
    """
    A L{ScriptedSMTPServer} action: write C{data} (if any), then close the
    connection; nothing more is read.
    """

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Drop({self.data!r})"


class Stall:
    """
    A L{ScriptedSMTPServer} action: write C{data} (if any), then never
    answer again, keeping the connection open.
    """

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Stall({self.data!r})"


class Trickle:
    """
    A L{ScriptedSMTPServer} action: write C{data} a line at a time, each
    line C{delay} seconds after the one before (the first C{delay} seconds
    after the command).
    """

    def __init__(self, data: bytes, delay: float) -> None:
        self.data = data
        self.delay = delay

    def __repr__(self) -> str:
        return f"Trickle({self.data!r}, {self.delay!r})"


#: The TLS record of a fatal C{handshake_failure} alert (TLS 1.2 record
#: layer, as TLS 1.3 servers send it too): what L{BrokenTLS} answers a
#: client's hello with by default.
TLS_HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"


class StartTLS:
    """
    A L{ScriptedSMTPServer} action, for C{STARTTLS}: write C{reply}, then
    really start TLS as the server, with C{contextFactory}; the session
    starts again inside TLS (the client says EHLO again, and the default
    reply no longer offers STARTTLS).  Anything the client sent after its
    C{STARTTLS} line before TLS began is thrown away, as RFC 3207
    requires.

    The handshake fails if the client does not accept the server's
    certificate: give C{contextFactory} a certificate of an authority
    the client does not trust, or for another name, to see what the
    client does then.

    The server's transport must provide
    C{twisted.internet.interfaces.ITLSTransport}, as a TCP connection
    does (not an in-memory one: use L{BrokenTLS} there).  Said again
    once TLS is on, it answers C{503 5.5.1}.
    """

    def __init__(self, contextFactory, reply: bytes = b"220 2.0.0 Ready to start TLS\r\n") -> None:
        """
        @param contextFactory: the server's TLS options, for example
            C{twisted.internet.ssl.PrivateCertificate.loadPEM(pem).options()}
            or a C{twisted.internet.ssl.CertificateOptions}.
        @param reply: what is written before TLS starts.
        """
        self.contextFactory = contextFactory
        self.reply = reply

    def __repr__(self) -> str:
        return f"StartTLS({self.contextFactory!r}, {self.reply!r})"


class BrokenTLS:
    """
    A L{ScriptedSMTPServer} action, for C{STARTTLS}: write C{reply}, as if
    TLS could start, then answer the first bytes the client sends (its TLS
    hello) with C{data} instead of a TLS handshake, and close the
    connection: the client sees its TLS handshake fail.

    It waits for the client's hello because a client must refuse anything
    a server sends between its reply to STARTTLS and the start of TLS as
    an attack, which is another test.  Works on any transport.
    """

    def __init__(self, data: bytes = TLS_HANDSHAKE_FAILURE, reply: bytes = b"220 2.0.0 Ready to start TLS\r\n") -> None:
        """
        @param data: what the client's hello gets: by default a TLS
            C{handshake_failure} alert (L{TLS_HANDSHAKE_FAILURE}); any
            bytes, such as C{b"not TLS\\r\\n"}; or C{b""} to close the
            connection without a word.
        @param reply: what is written to C{STARTTLS}.
        """
        self.data = data
        self.reply = reply

    def __repr__(self) -> str:
        return f"BrokenTLS({self.data!r}, {self.reply!r})"


#: What a L{ScriptedSMTPServer} answers unless its script says otherwise.
#: C{GREETING} is said on connecting, C{EOD} to the end of a message's
#: data, C{BODY} to each line of it (nothing), C{OTHER} to any other
#: command.
SCRIPT_DEFAULTS = {
    b"GREETING": b"220 mx.example ESMTP scripted\r\n",
    b"EHLO": None,  # worked out from the extensions
    b"HELO": b"250 mx.example\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"EOD": b"250 2.0.0 Ok: queued\r\n",
    b"BODY": b"",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"QUIT": Drop(b"221 2.0.0 Bye\r\n"),
    b"STARTTLS": b"454 4.7.0 TLS not available\r\n",
    b"OTHER": b"500 5.5.2 Command not recognized\r\n",
}


class ScriptedSMTPServer(LineReceiver):
    """
    An SMTP server that answers what its script says, to test how a client
    copes with servers that misbehave: a reply where another belongs, extra
    reply lines, garbage, a reply trickled line by line, no reply at all, a
    dropped connection, a TLS handshake that fails.

    The script maps a command (C{b"EHLO"}, C{b"HELO"}, C{b"MAIL"},
    C{b"RCPT"}, C{b"DATA"}, C{b"RSET"}, C{b"NOOP"}, C{b"QUIT"},
    C{b"STARTTLS"}, C{b"AUTH"}, ...) or an event (C{b"GREETING"} on
    connecting, C{b"EOD"} for the end of a message's data, C{b"BODY"} for
    each line of it, C{b"OTHER"} for any command not in the script) to an
    action, or to a list of actions used in turn (the last one again once
    the list is used up).  An action is:

      - C{bytes}: written as they are (one reply, several, extra lines
        after a reply, garbage; C{b""} for no answer);
      - C{None}: the default for that command (L{SCRIPT_DEFAULTS});
      - L{Drop}: close the connection (after writing its data);
      - L{Stall}: never answer again (after writing its data);
      - L{Trickle}: write lines one at a time, with a delay before each;
      - L{StartTLS}: say 220 and really start TLS (on a TCP connection);
      - L{BrokenTLS}: say 220 and fail the TLS handshake;
      - a callable: called with the line received (the command; for
        C{GREETING}, C{b""}; for C{EOD}, C{b"."}; for C{BODY}, the line
        of the message) and the server, it returns one of the actions
        above, for example a reply that depends on L{accepted}::

            def rcpt(line, server):
                if server.accepted < 2:
                    return b"250 2.1.5 Ok\\r\\n"
                return b"452 4.5.3 Too many recipients\\r\\n"

            ScriptedSMTPServer({b"RCPT": rcpt})

    What the server writes to DATA decides whether a message follows: a
    reply beginning with C{354} reads the message's lines until C{.}.

    When EHLO is answered by default, the reply offers C{extensions}, and
    STARTTLS too if the script's action for STARTTLS is (or its list has)
    a L{StartTLS} or a L{BrokenTLS}; once TLS is on, STARTTLS is no
    longer offered.  (A script whose STARTTLS is a callable offers it only
    if C{extensions} lists it.)

    @ivar commands: every command line received, in order (not the lines
        of messages).
    @ivar messages: the data of every message received, dot-stuffing
        removed, each line ending in CRLF.
    @ivar accepted: how many recipients the current transaction has:
        RCPT commands answered with a reply beginning with C{2}, since the
        last MAIL, RSET, EHLO, HELO, end of data or start of TLS.
    @ivar tls: whether TLS was started (by a L{StartTLS}) on this
        connection.
    @ivar closed: a C{Deferred} that fires when the connection is lost.
    """

    MAX_LENGTH = 1 << 20

    def __init__(self, script=None, extensions=(b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES"), clock=None) -> None:
        """
        @param script: the actions, by command; see the class docstring.
        @param extensions: the EHLO keywords offered by default.
        @param clock: what times L{Trickle} (an C{IReactorTime}); the
            global reactor if C{None}.
        """
        self.script = dict(script or {})
        self.extensions = list(extensions)
        self.clock = clock
        self.commands = []
        self.messages = []
        self.accepted = 0
        self.tls = False
        self.closed = defer.Deferred()
        self._uses = {}
        self._body = None
        self._done = False
        self._pending = []
        self._brokenTLS = None

    def _clock(self):
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        return self.clock

    def _offersTLS(self) -> bool:
        """
        Whether the script's STARTTLS starts TLS, or tries to.
        """
        action = self.script.get(b"STARTTLS")
        actions = action if isinstance(action, list) else [action]
        return any(isinstance(a, (StartTLS, BrokenTLS)) for a in actions)

    def _ehloReply(self) -> bytes:
        extensions = self.extensions
        if self.tls:
            extensions = [e for e in extensions if e.split(b" ", 1)[0].upper() != b"STARTTLS"]
        elif self._offersTLS() and not any(e.split(b" ", 1)[0].upper() == b"STARTTLS" for e in extensions):
            extensions = [*extensions, b"STARTTLS"]
        lines = [b"mx.example greets you", *extensions]
        last = len(lines) - 1
        return b"".join(b"250" + (b" " if i == last else b"-") + line + b"\r\n" for i, line in enumerate(lines))

    def actionFor(self, key: bytes, line: bytes = b""):
        """
        @param key: the command or event (see the class docstring).
        @param line: the line received, for an action that is a callable.
        @return: the next action for C{key}, from the script or the
            defaults; never C{None}, a list or a callable.
        """
        action = self.script.get(key, self.script.get(b"OTHER") if key not in SCRIPT_DEFAULTS else None)
        if isinstance(action, list):
            used = self._uses.get(key, 0)
            self._uses[key] = used + 1
            action = action[min(used, len(action) - 1)] if action else None
        if callable(action):
            action = action(line, self)
        if action is None:
            action = self._ehloReply() if key == b"EHLO" else SCRIPT_DEFAULTS.get(key, SCRIPT_DEFAULTS[b"OTHER"])
        return action

    def perform(self, action) -> None:
        """
        Carry out an action (see the class docstring).
        """
        if isinstance(action, Trickle):
            lines = action.data.splitlines(keepends=True)
            self._pending = [self._clock().callLater(action.delay * (i + 1), self._write, line) for i, line in enumerate(lines)]
            return
        if isinstance(action, (Drop, Stall)):
            self._write(action.data)
            self._done = True
            if isinstance(action, Drop):
                self.transport.loseConnection()
            return
        if isinstance(action, StartTLS):
            self._startTLS(action)
            return
        if isinstance(action, BrokenTLS):
            self._write(action.reply)
            # What came after STARTTLS is the client's hello, or would be.
            self.clearLineBuffer()
            self._brokenTLS = action
            self.setRawMode()
            return
        self._write(action)

    def _startTLS(self, action: StartTLS) -> None:
        if self.tls:
            self._write(b"503 5.5.1 TLS already active\r\n")
            return
        self._write(action.reply)
        # Nothing sent before TLS is taken as said inside it (RFC 3207 4.2).
        self.clearLineBuffer()
        self.transport.startTLS(action.contextFactory)
        self.tls = True
        self.accepted = 0

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not getattr(self.transport, "disconnected", False):
            self.transport.write(data)

    def connectionMade(self) -> None:
        self.perform(self.actionFor(b"GREETING"))

    def lineReceived(self, line: bytes) -> None:
        if self._done:
            return
        if self._body is not None:
            self._bodyLine(line)
            return
        self.commands.append(line)
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb in (b"MAIL", b"RSET", b"EHLO", b"HELO"):
            self.accepted = 0
        action = self.actionFor(verb, line)
        if verb == b"DATA" and self._opensData(action):
            self._body = []
        if verb == b"RCPT" and self._replyOf(action)[:1] == b"2":
            self.accepted += 1
        self.perform(action)

    def rawDataReceived(self, data: bytes) -> None:
        """
        The client's TLS hello, after a L{BrokenTLS}: answer it with the
        action's data and close.
        """
        if self._done or self._brokenTLS is None:
            return
        self._write(self._brokenTLS.data)
        self._done = True
        self.transport.loseConnection()

    @staticmethod
    def _replyOf(action) -> bytes:
        """
        What an action writes first, or would.
        """
        if isinstance(action, (StartTLS, BrokenTLS)):
            return action.reply
        if isinstance(action, (Drop, Stall, Trickle)):
            return action.data
        return action if isinstance(action, bytes) else b""

    @classmethod
    def _opensData(cls, action) -> bool:
        return isinstance(action, (bytes, Trickle)) and cls._replyOf(action)[:3] == b"354"

    def _bodyLine(self, line: bytes) -> None:
        if line == b".":
            self.messages.append(b"".join(self._body))
            self._body = None
            action = self.actionFor(b"EOD", line)
            self.accepted = 0
            self.perform(action)
            return
        self._body.append((line[1:] if line[:1] == b"." else line) + b"\r\n")
        self.perform(self.actionFor(b"BODY", line))

    def connectionLost(self, reason=None) -> None:
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending = []
        self._done = True
        if not self.closed.called:
            self.closed.callback(None)


class ScriptedSMTPFactory(ServerFactory):
    """
    Makes a L{ScriptedSMTPServer} per connection, all with the same script
    (each with its own use of lists of actions); for C{listenTCP}.

    @ivar servers: the servers made, in order.
    """

    def __init__(self, script=None, extensions=(b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES"), clock=None) -> None:
        """
        @param script: see L{ScriptedSMTPServer}.
        @param extensions: see L{ScriptedSMTPServer}.
        @param clock: see L{ScriptedSMTPServer}.
        """
        self.script = script
        self.extensions = extensions
        self.clock = clock
        self.servers = []

    def buildProtocol(self, addr) -> ScriptedSMTPServer:
        server = ScriptedSMTPServer(self.script, self.extensions, self.clock)
        server.factory = self
        self.servers.append(server)
        return server

    @property
    def commands(self) -> list[bytes]:
        """
        The commands every server received, connection after connection.
        """
        return [line for server in self.servers for line in server.commands]

    @property
    def messages(self) -> list[bytes]:
        """
        The messages every server received.
        """
        return [message for server in self.servers for message in server.messages]

    def allClosed(self) -> defer.Deferred:
        """
        @return: a C{Deferred} that fires once every connection so far is
            closed.
        """
        return defer.gatherResults([server.closed for server in self.servers])
