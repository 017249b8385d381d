"""The URL fetcher: an SSRF matrix against loopback canaries that must see no connection, pinning, limits."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, Iterator

import pytest
from helpers import SLOW_BODY, SLOW_HEADERS, endless, image_bytes, redirect, send, Server

from mobilenet import urlfetch, settings
from mobilenet.intake import ImageError
from mobilenet.urlfetch import URLError, fetch_url, is_public_address

IMAGE = image_bytes(0)
PRETEND_PUBLIC = ipaddress.IPv4Address("127.0.0.2")  # a loopback address these tests treat as on the internet


@pytest.fixture(autouse=True)
def default_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ALLOW_PRIVATE_URLS_ENV, raising=False)


@pytest.fixture
def canary() -> Iterator[Server]:
    server = Server("127.0.0.1", {"/": lambda h: send(h, 200, IMAGE)})
    yield server
    server.close()


@pytest.fixture
def canary6() -> Iterator[Server | None]:
    try:
        server = Server("::1", {"/": lambda h: send(h, 200, IMAGE)})
    except OSError:  # no IPv6 loopback here
        yield None
        return
    yield server
    server.close()


@pytest.fixture
def public(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A server on 127.0.0.2, which the address check is told to count as public."""
    real = urlfetch.is_public_address
    monkeypatch.setattr(urlfetch, "is_public_address", lambda ip: ip == PRETEND_PUBLIC or real(ip))
    server = Server(str(PRETEND_PUBLIC), {"/img": lambda h: send(h, 200, IMAGE)})
    yield server
    server.close()


def resolver(monkeypatch: pytest.MonkeyPatch, *answers: list[str]) -> list[str]:
    """Replace DNS: the first lookup gets answers[0], later ones answers[1] (a rebinding DNS server)."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in answers[min(len(calls), len(answers)) - 1]]

    monkeypatch.setattr(urlfetch, "resolve", resolve)
    return calls


SSRF = [
    # loopback by name and by number, in every spelling
    "http://127.0.0.1:{port}/", "http://localhost:{port}/", "http://LocalHost:{port}/", "http://localhost.:{port}/",
    "http://127.1:{port}/", "http://2130706433:{port}/", "http://0x7f000001:{port}/", "http://0x7f.0.0.1:{port}/",
    "http://0177.0.0.1:{port}/", "http://017700000001:{port}/", "http://127.000.000.001:{port}/",
    "http://127.0.0.1.:{port}/", "http://１２７.０.０.１:{port}/", "http://0.0.0.0:{port}/", "http://0:{port}/",
    # IPv6, IPv4-mapped, -compatible, 6to4, NAT64, zones
    "http://[::1]:{port6}/", "http://[0:0:0:0:0:0:0:1]:{port6}/", "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/", "http://[::127.0.0.1]:{port}/", "http://[2002:7f00:1::1]:{port}/",
    "http://[64:ff9b::127.0.0.1]:{port}/", "http://[fe80::1%25lo]:{port6}/", "http://[::]:{port6}/",
    # user names, backslashes, whitespace, missing hosts
    "http://images.example.com@127.0.0.1:{port}/", "http://127.0.0.1:{port}@images.example.com/",
    "http://127.0.0.1:{port}\\@images.example.com/", "http://127.0.0.1:{port}/\r\nX: y", " http://127.0.0.1:{port}/",
    "http:/127.0.0.1:{port}/", "http:127.0.0.1:{port}/", "//127.0.0.1:{port}/", "127.0.0.1:{port}/",
    "http://%31%32%37.0.0.1:{port}/", "http://[::1:{port}/", "http://127.0.0.1.:{port}/",
    # other schemes
    "ftp://127.0.0.1:{port}/", "file:///etc/passwd", "file://localhost/etc/passwd", "gopher://127.0.0.1:{port}/_GET",
    "dict://127.0.0.1:{port}/", "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)",
    # cloud metadata, private, CGNAT, multicast, reserved and documentation ranges
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/meta-data/", "http://100.100.100.200/",
    "http://100.64.0.1/", "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.0.1/", "http://192.0.0.170/",
    "http://198.18.0.1/", "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/", "http://[fc00::1]/",
    "http://[fec0::1]/", "http://[ff02::1]/", "http://[2001:db8::1]/", "http://[2001::1]/",
]


@pytest.mark.parametrize("template", SSRF)
def test_ssrf_matrix_is_refused_before_any_connection(template: str, canary: Server, canary6: Server | None) -> None:
    url = template.format(port=canary.port, port6=canary6.port if canary6 else canary.port)
    start = time.perf_counter()
    with pytest.raises(URLError):
        fetch_url(url, connect_timeout=1, read_timeout=1)
    assert time.perf_counter() - start < 1
    assert not canary.visited
    assert canary6 is None or not canary6.visited


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:{port}/", "http://localhost:{port}/", "http://[::1]:{port}/", "http://2130706433:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/", "http://169.254.169.254/", "file:///etc/passwd", "ftp://127.0.0.1:{port}/",
])
def test_redirects_into_private_space_are_refused(location: str, public: Server, canary: Server) -> None:
    public.routes["/go"] = redirect(location.format(port=canary.port))
    with pytest.raises(URLError):
        fetch_url(public.url("/go"))
    assert [path for path, _ in public.requests] == ["/go"]
    assert not canary.visited


@pytest.mark.parametrize("url,words", [
    ("gopher://93.184.216.34/", "only http:// and https://"),
    ("http://127.0.0.1:1@images.example.com/", "user name or password"),
    ("http://127.0.0.1:1\\@images.example.com/", "backslashes"),
    ("http://93.184.216.34:0/", "port 0"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://0x7f000001/", "unusual way to write an IP address"),
    ("http://" + "a" * 2100 + ".example/", "longer than 2048"),
])
def test_each_refusal_names_its_reason(url: str, words: str) -> None:
    """The matrix above is refused, but half of it only for its private address (or, without DNS here, an unknown
    host): each check that comes first must hold on its own."""
    with pytest.raises(URLError, match=words):
        urlfetch.check_url(url, False, 1.0)


def test_a_redirect_chain_is_checked_at_every_hop(public: Server, canary: Server) -> None:
    public.routes.update({"/a": redirect("/b"), "/b": redirect(public.url("/c")), "/c": redirect(canary.url())})
    with pytest.raises(URLError, match="not a public internet address"):
        fetch_url(public.url("/a"))
    assert [path for path, _ in public.requests] == ["/a", "/b", "/c"]
    assert not canary.visited


def test_at_most_three_redirects(public: Server) -> None:
    public.routes.update({f"/{i}": redirect(f"/{i + 1}") for i in range(4)} | {"/4": public.routes["/img"]})
    assert fetch_url(public.url("/1")) == IMAGE
    with pytest.raises(URLError, match="too many redirects"):
        fetch_url(public.url("/0"))
    assert [path for path, _ in public.requests] == ["/1", "/2", "/3", "/4", "/0", "/1", "/2", "/3"]


def test_the_answer_time_limit_holds_for_a_chain_of_redirects(public: Server) -> None:
    """Each hop had the whole limit: four slow hops held a visitor four times as long as the README says."""
    def slow_redirect(to: str) -> Callable:
        def route(h: BaseHTTPRequestHandler) -> None:
            time.sleep(0.4)
            redirect(to)(h)
        return route

    public.routes.update({f"/{i}": slow_redirect(f"/{i + 1}") for i in range(3)} | {"/3": public.routes["/img"]})
    start = time.monotonic()
    with pytest.raises(URLError, match="too slow: no complete answer within 1 s"):
        fetch_url(public.url("/0"), read_timeout=1)
    assert time.monotonic() - start < 1.5


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, canary: Server,
                                                              public: Server) -> None:
    resolver(monkeypatch, ["127.0.0.1"])
    with pytest.raises(URLError, match="images.example.com points to 127.0.0.1"):
        fetch_url(f"http://images.example.com:{canary.port}/")
    resolver(monkeypatch, [str(PRETEND_PUBLIC), "127.0.0.1"])  # one private address among public ones is enough
    with pytest.raises(URLError, match="not a public internet address"):
        fetch_url(f"http://images.example.com:{canary.port}/")
    assert not canary.visited


def test_the_connection_goes_to_the_checked_address(monkeypatch: pytest.MonkeyPatch, public: Server) -> None:
    """DNS rebinding: the second answer points at the canary, but there is no second lookup."""
    canary = Server("127.0.0.1", port=public.port)
    try:
        calls = resolver(monkeypatch, [str(PRETEND_PUBLIC)], ["127.0.0.1"])
        assert fetch_url(f"http://rebind.example:{public.port}/img") == IMAGE
        assert calls == ["rebind.example"]
        assert not canary.visited
        assert public.requests[0][1]["Host"] == f"rebind.example:{public.port}"
    finally:
        canary.close()


def test_a_host_name_may_end_in_a_dot(monkeypatch: pytest.MonkeyPatch, public: Server) -> None:
    resolver(monkeypatch, [str(PRETEND_PUBLIC)])
    assert fetch_url(f"http://images.example.com.:{public.port}/img") == IMAGE
    assert public.requests[0][1]["Host"] == f"images.example.com:{public.port}"


def test_a_host_with_many_silent_addresses_is_tried_a_few_times(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver(monkeypatch, [f"203.0.113.{i}" for i in range(1, 21)])
    monkeypatch.setattr(urlfetch, "is_public_address", lambda ip: True)
    tried: list[str] = []

    def silent(address: tuple[str, int], timeout: float) -> socket.socket:
        tried.append(address[0])
        raise TimeoutError

    monkeypatch.setattr(urlfetch.socket, "create_connection", silent)
    with pytest.raises(URLError, match="could not connect to many.example within 5 s"):
        fetch_url("http://many.example/x.png")
    assert tried == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]


def test_the_private_setting_allows_loopback_for_a_trusted_install(monkeypatch: pytest.MonkeyPatch,
                                                                   canary: Server) -> None:
    assert fetch_url(canary.url(), allow_private=True) == IMAGE
    monkeypatch.setenv(settings.ALLOW_PRIVATE_URLS_ENV, "1")
    assert fetch_url(canary.url(host="localhost")) == IMAGE
    with pytest.raises(URLError):
        fetch_url(canary.url(), allow_private=False)  # an explicit False wins over the setting
    assert len(canary.requests) == 2


def declared(length: int, body: bytes, then_wait_s: float = 0.0) -> Callable[[BaseHTTPRequestHandler], None]:
    """An image answer that declares `length` bytes, sends `body`, waits, and closes."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(length))
        h.end_headers()
        h.wfile.write(body)
        time.sleep(then_wait_s)
    return route


@pytest.fixture
def loopback() -> Iterator[Server]:
    server = Server("127.0.0.1")
    yield server
    server.close()


@pytest.mark.parametrize("route,words", [
    (lambda h: send(h, 200, b"x" * 5000), "larger than"),
    (endless, "larger than"),
    (lambda h: send(h, 200, b"<html></html>", "text/html"), "text/html, not an image"),
    (lambda h: send(h, 200, IMAGE, ""), "without a content type"),
    (lambda h: send(h, 200, IMAGE, headers={"Content-Encoding": "gzip"}), "compressed"),
    (lambda h: send(h, 404, b"gone", "text/plain"), "answered 404"),
    (lambda h: send(h, 302), "without saying where"),
    (redirect("http://[::1"), "redirected to a malformed address"),
    (SLOW_BODY, "too slow"),
    (SLOW_HEADERS, "too slow"),
    (declared(1000, b"x" * 10), "broke off"),
    (declared(10**9, b"", then_wait_s=1), "larger than"),  # told by its headers, before any body
])
def test_bad_answers_are_refused_quickly(route, words: str, loopback: Server) -> None:
    loopback.routes["/x"] = route
    start = time.perf_counter()
    with pytest.raises(URLError, match=words):
        fetch_url(loopback.url("/x"), allow_private=True, max_bytes=4096, read_timeout=0.5)
    assert time.perf_counter() - start < 2


def test_a_status_is_told_in_its_standard_words_not_the_servers(loopback: Server) -> None:
    """The visitor sees the message as Markdown: a server's own reason could put a link or a tracking image in it."""
    def hostile(handler) -> None:
        handler.send_response(404, "Expired [sign in](https://evil.example) ![](https://evil.example/p.png)")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    loopback.routes["/x"] = hostile
    with pytest.raises(URLError) as refused:
        fetch_url(loopback.url("/x"), allow_private=True)
    assert str(refused.value).endswith("answered 404 Not Found") and "evil" not in str(refused.value)


def test_an_octet_stream_is_accepted_and_errors_are_image_errors(loopback: Server) -> None:
    loopback.routes["/x"] = lambda h: send(h, 200, IMAGE, "application/octet-stream")
    assert fetch_url(loopback.url("/x"), allow_private=True) == IMAGE
    assert issubclass(URLError, ImageError)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.31.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "192.0.0.8", "192.0.2.1", "198.51.100.1", "203.0.113.1", "198.18.0.1",
    "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::8.8.8.8",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "64:ff9b::10.0.0.1", "64:ff9b:1::8.8.8.8", "2001::1",
    "2001:db8::1", "fc00::1", "fd00:ec2::254", "fe80::1", "fec0::1", "ff02::1", "100::1",
])
def test_private_and_special_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


# ---- TLS: SNI and the certificate check use the name, while the connection goes to the checked address ----


@pytest.fixture
def tls_server(tmp_path: Path, public: Server) -> Iterator[tuple[Server, Path, list[str]]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=tls.example", "-addext", "subjectAltName=DNS:tls.example", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = Server(str(PRETEND_PUBLIC), {"/img": lambda h: send(h, 200, IMAGE)})
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    yield server, cert, names
    server.close()


def test_tls_is_verified_against_the_host_name(monkeypatch: pytest.MonkeyPatch, tls_server) -> None:
    server, cert, names = tls_server
    resolver(monkeypatch, [str(PRETEND_PUBLIC)])
    with pytest.raises(URLError, match="certificate of tls.example is not valid"):
        fetch_url(f"https://tls.example:{server.port}/img")  # self-signed: not trusted
    monkeypatch.setattr(urlfetch, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    assert fetch_url(f"https://tls.example:{server.port}/img") == IMAGE
    assert names == ["tls.example", "tls.example"]
    assert server.requests[0][1]["Host"] == f"tls.example:{server.port}"
    with pytest.raises(URLError, match="certificate"):  # the same server by address: the name does not match
        fetch_url(f"https://{PRETEND_PUBLIC}:{server.port}/img")


def test_a_url_typed_without_a_scheme_follows_relative_redirects(monkeypatch: pytest.MonkeyPatch, tls_server) -> None:
    server, cert, _ = tls_server
    resolver(monkeypatch, [str(PRETEND_PUBLIC)])
    monkeypatch.setattr(urlfetch, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    server.routes.update({"/go": redirect("/img"), "/cdn": redirect(f"//tls.example:{server.port}/img")})
    assert fetch_url(f"tls.example:{server.port}/go") == IMAGE
    assert fetch_url(f"tls.example:{server.port}/cdn") == IMAGE
    assert [path for path, _ in server.requests] == ["/go", "/img", "/cdn", "/img"]


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str, port: int) -> list:
        raise socket.gaierror("no such host")

    monkeypatch.setattr(urlfetch, "resolve", fail)
    with pytest.raises(URLError, match="cannot find the host nowhere.example"):
        fetch_url("http://nowhere.example/x.png")


def test_a_silent_name_server_is_given_up_on_and_cannot_tie_up_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    silent = threading.Event()
    looked_up: list[str] = []

    def resolve(host: str, port: int) -> list:
        looked_up.append(host)
        if host.startswith("silent"):
            silent.wait(30)
        return [PRETEND_PUBLIC]

    monkeypatch.setattr(urlfetch, "resolve", resolve)
    try:
        for i in range(urlfetch.LOOKUP_THREADS + 1):  # the last one finds every lookup thread taken
            start = time.monotonic()
            with pytest.raises(URLError, match=f"silent{i}.example: its name servers did not answer within 0.2 s"):
                fetch_url(f"http://silent{i}.example/x.png", connect_timeout=0.2)
            assert time.monotonic() - start < 2
    finally:
        silent.set()
    assert f"silent{urlfetch.LOOKUP_THREADS}.example" not in looked_up  # given up on before it had a thread
    assert urlfetch.check_url("http://loud.example/x.png", True, 5).addresses == (PRETEND_PUBLIC,)


def test_one_visitor_has_one_lookup_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    silent = threading.Event()

    def resolve(host: str, port: int) -> list:
        if host.startswith("silent"):
            silent.wait(30)
        return [PRETEND_PUBLIC]

    monkeypatch.setattr(urlfetch, "resolve", resolve)
    try:
        with pytest.raises(URLError, match="did not answer within 0.2 s"):
            urlfetch.check_url("http://silent1.example/", True, 0.2, owner="203.0.113.7")
        start = time.monotonic()
        with pytest.raises(URLError, match="an address given from your network is still being looked up"):
            urlfetch.check_url("http://silent2.example/", True, 0.2, owner="203.0.113.7")  # after its own timeout
        assert 0.2 <= time.monotonic() - start < 1
        assert urlfetch.check_url("http://loud.example/", True, 5, owner="198.51.100.1").addresses == (PRETEND_PUBLIC,)
    finally:
        silent.set()
    for _ in range(100):  # the stuck lookup ends, and its visitor may look up again
        if "203.0.113.7" not in urlfetch._looking_up:
            break
        time.sleep(0.05)
    assert urlfetch.check_url("http://loud.example/", True, 5, owner="203.0.113.7").addresses == (PRETEND_PUBLIC,)


def test_two_visitors_behind_one_address_look_up_one_after_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neighbours behind one NAT address (or one visitor's two tabs) pasting URLs at once: the second used to fail at
    once, told its lookup was still running."""
    def resolve(host: str, port: int) -> list:
        time.sleep(0.3)  # an ordinary name server
        return [PRETEND_PUBLIC]

    monkeypatch.setattr(urlfetch, "resolve", resolve)
    start = threading.Barrier(2)

    def visitor(host: str) -> tuple:
        start.wait()
        return urlfetch.check_url(f"http://{host}/", True, 5, owner="203.0.113.7").addresses

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(visitor, ["one.example", "two.example"])) == [(PRETEND_PUBLIC,)] * 2


def test_a_process_does_not_wait_for_a_stuck_lookup_to_exit() -> None:
    script = ("import time\nfrom mobilenet import urlfetch\n"
              "urlfetch.resolve = lambda host, port: time.sleep(60)\n"
              "try:\n    urlfetch.fetch_url('http://silent.example/x.png', connect_timeout=0.2)\n"
              "except urlfetch.URLError as e:\n    print(e)\nprint(time.time())\n")
    # Timed from the refusal to the exit: importing torch alone took 40-100 s on a loaded 2-core machine.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    said, refused_at = done.stdout.strip().splitlines()
    assert said == "cannot find the host silent.example: its name servers did not answer within 0.2 s"
    assert time.time() - float(refused_at) < 20


@pytest.mark.parametrize("typed,meant", [
    ("example.org/cat.png", "https://example.org/cat.png"), ("example.org:8080/a", "https://example.org:8080/a"),
    ("localhost/cat.png", "https://localhost/cat.png"), ("http://example.org/a", "http://example.org/a"),
    ("javascript:alert(1)", "javascript:alert(1)"), ("data:image/png;base64,iVBO", "data:image/png;base64,iVBO"),
    ("file:///etc/passwd", "file:///etc/passwd"),
])
def test_a_url_typed_without_a_scheme_is_https(typed: str, meant: str) -> None:
    assert urlfetch.with_scheme(typed) == meant


def test_a_private_address_refusal_names_the_setting_that_allows_it(canary: Server) -> None:
    with pytest.raises(URLError, match=f"allow them with {settings.ALLOW_PRIVATE_URLS_ENV}=1"):
        fetch_url(f"127.0.0.1:{canary.port}/")  # typed without a scheme: https, still refused
    assert not canary.visited
