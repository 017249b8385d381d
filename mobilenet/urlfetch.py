"""URL → image bytes for URLs typed by strangers, without reaching anything inside the server's network.

Only http and https, with a host written as a DNS name or a plain IP address (no decimal, octal or hex
spellings, user names or IPv6 zones). Every address the host resolves to must be public; the
connection then goes to an address that was checked, so a second DNS answer cannot send it elsewhere
(DNS rebinding), while the Host header, TLS SNI and certificate check use the name. Redirects are
followed by hand and checked the same way. No proxy is used: a proxy would resolve the name itself.

For a trusted local install, MOBILENET_ALLOW_PRIVATE_URLS=1 allows private addresses (loopback, LAN).
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from urllib.parse import quote, urljoin, urlsplit

from . import intake, settings
from .intake import ImageError

DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
MAX_URL_LENGTH = 2048
# Of a host's addresses (all checked), the first few are tried: a name with dozens of addresses that never answer
# would otherwise hold a visitor's request for connect_timeout times as many.
MAX_TRIED_ADDRESSES = 3
CHUNK = 64 * 1024
# getaddrinfo has no timeout of its own (a silent name server holds it for the resolver's 10-30 s), so each lookup
# runs in a thread of its own and a visitor waits at most the timeout. A stuck lookup keeps its thread until the
# resolver gives up; at most this many at once, and lookups beyond them wait their turn within the same timeout.
LOOKUP_THREADS = 8
_lookup_slots = threading.BoundedSemaphore(LOOKUP_THREADS)
# Whose lookups are running (a visitor's address): one each, so that one visitor cannot hold every lookup thread.
_looking_up: set[str] = set()
_looking_up_lock = threading.Lock()
_lookup_ended = threading.Condition(_looking_up_lock)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that ipaddress counts as global but that must not be fetched from, or that embed an IPv4 address.
_IETF_V4 = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("192.88.99.0/24"))
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_TEREDO = ipaddress.ip_network("2001::/32")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")


class URLError(ImageError):
    """A URL that was refused or could not be fetched; the message is fit to show to whoever sent it."""


def is_public_address(ip: IPAddress) -> bool:
    """A globally routable unicast address; IPv6 forms that embed an IPv4 address are judged by it."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        if ip not in _GLOBAL_UNICAST_V6 or ip in _TEREDO:
            return False
    elif any(ip in net for net in _IETF_V4):
        return False
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of a host name (the one DNS lookup of a fetch; tests replace it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _lookup(host: str, port: int, timeout: float, owner: str | None = None) -> list[IPAddress]:
    """resolve(), given up after timeout seconds; at most one running lookup per owner (None: no limit): another
    of the owner's (a second tab, a neighbour behind the same address) waits its turn within its own timeout."""
    deadline = time.monotonic() + timeout
    answer: list = []
    if owner is not None:
        with _lookup_ended:
            if not _lookup_ended.wait_for(lambda: owner not in _looking_up, timeout):
                raise URLError("an address given from your network is still being looked up (its name servers are "
                               "slow); try again in half a minute")
            _looking_up.add(owner)

    def done() -> None:
        with _lookup_ended:
            _looking_up.discard(owner)
            _lookup_ended.notify_all()

    def look_up() -> None:
        try:
            answer.append(resolve(host, port))
        except Exception as e:
            answer.append(e)
        finally:
            _lookup_slots.release()
            done()

    if _lookup_slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
        # A daemon thread: a process that exits (the command line's predict) does not wait for a stuck lookup.
        lookup = threading.Thread(target=look_up, name=f"url-lookup {host}", daemon=True)
        lookup.start()
        lookup.join(max(0.0, deadline - time.monotonic()))
    else:
        done()
    if not answer:
        raise URLError(f"cannot find the host {host}: its name servers did not answer within {timeout:g} s")
    if isinstance(answer[0], (OSError, UnicodeError, ValueError)):
        raise URLError(f"cannot find the host {host}") from None
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # ASCII (IDNA) name or IP address, for the Host header, SNI and the certificate
    port: int
    path: str  # path and query, percent-encoded
    addresses: tuple[IPAddress, ...]  # checked; the connection goes to one of these and nowhere else


def _ip_literal(host: str) -> IPAddress | None:
    """The host as an IP address, or None for a DNS name; unusual spellings of addresses are refused."""
    if ":" in host:  # urlsplit leaves a colon in the host only for a bracketed IPv6 literal
        if "%" in host:
            raise URLError("IPv6 addresses with a zone (%) are not accepted")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise URLError(f"{host!r} is not a valid IPv6 address") from None
    # As in browsers, a host whose last label is a number is an IPv4 address, whatever its spelling.
    if _NUMBER.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            raise URLError(
                f"{host!r} is an unusual way to write an IP address; write four decimal numbers such as 93.184.216.34"
            ) from None
    return None


def with_scheme(url: str) -> str:
    """A URL typed without a scheme, as in a browser's address bar (example.org/cat.png), as https.

    Anything that names a scheme of its own (file:, data:, javascript:, ftp://) is left for check_url to refuse.
    """
    head = url.split("/", 1)[0]
    if "://" in url or (":" in head and "." not in head.split(":", 1)[0]):
        return url
    return f"https://{url}"


def check_url(url: str, allow_private: bool, lookup_timeout: float = 5.0, owner: str | None = None) -> Target:
    """A URL checked and resolved (within lookup_timeout seconds; one lookup at a time per owner), ready to fetch
    from; URLError if it must not be."""
    if len(url) > MAX_URL_LENGTH:
        raise URLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        raise URLError("the URL contains spaces, control characters or backslashes")
    url = with_scheme(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise URLError(f"malformed URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise URLError("only http:// and https:// URLs are accepted")
    if "@" in parts.netloc:
        raise URLError("URLs with a user name or password are not accepted")
    if not parts.hostname:
        raise URLError("the URL has no host")
    if port == 0:
        raise URLError("port 0 is not a valid port")
    try:
        host = parts.hostname.encode("idna").decode("ascii").lower().removesuffix(".")  # example.com. = example.com
    except UnicodeError:
        raise URLError(f"{parts.hostname!r} is not a valid host name") from None
    literal = _ip_literal(host)
    if literal is None and not (len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))):
        raise URLError(f"{host!r} is not a valid host name")
    port = port or DEFAULT_PORTS[scheme]
    if literal is not None:
        addresses = [literal]
    else:
        addresses = _lookup(host, port, lookup_timeout, owner)
    if not addresses:
        raise URLError(f"cannot find the host {host}")
    refused = [a for a in addresses if not is_public_address(a)]
    if refused and not allow_private:
        where = "" if literal is not None else f" points to {refused[0]}, which"
        raise URLError(f"{host}{where} is not a public internet address; such URLs are refused (a trusted "
                       f"local install can allow them with {settings.ALLOW_PRIVATE_URLS_ENV}=1)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port, quote(path, safe="/?:@!$&'()*+,;=%"), tuple(addresses))


def _connect(target: Target, timeout: float) -> socket.socket:
    """A TCP (and TLS) connection to one of the first checked addresses."""
    error: OSError | None = None
    for address in target.addresses[:MAX_TRIED_ADDRESSES]:
        try:
            sock = socket.create_connection((str(address), target.port), timeout=timeout)
            break
        except OSError as e:
            error = e
    else:
        if isinstance(error, TimeoutError):
            raise URLError(f"could not connect to {target.host} within {timeout:g} s") from None
        raise URLError(f"could not connect to {target.host} ({getattr(error, 'strerror', None) or error})") from None
    if target.scheme == "https":
        try:
            sock = _tls_context().wrap_socket(sock, server_hostname=target.host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise URLError(f"the TLS certificate of {target.host} is not valid ({e.verify_message})") from None
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise URLError(f"could not set up TLS with {target.host} ({type(e).__name__})") from None
    return sock


@cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # certificate and host name checks on; loading the CAs once


def _cut(sock: socket.socket, fired: threading.Event) -> None:
    fired.set()
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread, which then sees `fired`
    except OSError:
        pass


def _get(target: Target, max_bytes: int, connect_timeout: float, read_timeout: float,
         deadline: float) -> tuple[int, str | None, bytes]:
    """(status, Location, body) of one GET; the whole answer must arrive by the deadline (time.monotonic), which
    ends read_timeout after the first request of its redirects."""
    sock = _connect(target, connect_timeout)
    left = max(0.0, deadline - time.monotonic())
    sock.settimeout(left)
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(target.host, target.port, context=_tls_context())
    else:
        conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock  # already open, to the checked address: the host name serves the Host header only
    fired = threading.Event()
    watchdog = threading.Timer(left, _cut, (sock, fired))  # a server trickling bytes cannot stall us
    watchdog.start()
    try:
        conn.request("GET", target.path, headers={
            "User-Agent": "mobilenet-v1-studio", "Accept": "image/*", "Accept-Encoding": "identity"})
        response = conn.getresponse()
        if response.status in REDIRECTS:
            return response.status, response.getheader("Location"), b""
        if response.status != 200:
            raise URLError(f"{target.host} answered {_status_words(response.status)}")
        _check_headers(response, max_bytes)
        body = bytearray()
        while chunk := response.read1(CHUNK):
            body += chunk
            if len(body) > max_bytes:
                raise URLError(f"the image is larger than {max_bytes / 2**20:.3g} MB")
        if fired.is_set():
            raise TimeoutError
        if response.length:
            raise URLError(f"{target.host} broke off before sending the whole image")
        return 200, None, bytes(body)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError too: a cut answer can look odd
        if fired.is_set() or isinstance(e, TimeoutError):
            raise URLError(f"{target.host} was too slow: no complete answer within {read_timeout:g} s") from None
        if isinstance(e, URLError):
            raise
        raise URLError(f"{target.host} sent a broken answer ({type(e).__name__})") from None
    finally:
        watchdog.cancel()
        conn.close()


def _status_words(status: int) -> str:
    """A status with its standard words, never the server's own (a stranger's text, shown to the visitor)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _check_headers(response: http.client.HTTPResponse, max_bytes: int) -> None:
    kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise URLError(f"the URL points to {kind or 'something without a content type'}, not an image")
    if (response.getheader("Content-Encoding") or "identity").lower() != "identity":
        raise URLError("the server sent the image compressed, which is not accepted")
    length = response.getheader("Content-Length") or ""
    if length.isdigit() and int(length) > max_bytes:
        raise URLError(f"the image is larger than {max_bytes / 2**20:.3g} MB")


def fetch_url(url: str, *, allow_private: bool | None = None, max_bytes: int = intake.MAX_BYTES,
              connect_timeout: float = 5.0, read_timeout: float = 10.0, max_redirects: int = 3,
              owner: str | None = None) -> bytes:
    """The body of an image URL, or URLError (an ImageError) with a message for the person who sent it.

    allow_private None: the MOBILENET_ALLOW_PRIVATE_URLS setting, off unless set. connect_timeout bounds each
    name lookup and each connection (TCP and TLS); read_timeout bounds the answers, however they trickle in, from
    the first request to the image after any redirects. owner (a visitor's address) gets one name lookup at a
    time: a lookup that outlives its timeout keeps a thread until the resolver gives up.
    """
    allow = settings.private_urls_allowed() if allow_private is None else allow_private
    url = with_scheme(url)  # a redirect's relative Location is joined to the URL as fetched
    deadline = time.monotonic() + read_timeout
    for _ in range(max_redirects + 1):
        target = check_url(url, allow, connect_timeout, owner)
        status, location, body = _get(target, max_bytes, connect_timeout, read_timeout, deadline)
        if status == 200:
            return body
        if not location:
            raise URLError(f"{target.host} answered {status} without saying where to go")
        try:
            url = urljoin(url, location)
        except ValueError:  # an unclosed IPv6 bracket, say
            raise URLError(f"{target.host} redirected to a malformed address") from None
    raise URLError(f"too many redirects (more than {max_redirects})")
