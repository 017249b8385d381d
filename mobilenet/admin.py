"""The admin gate: who may start, stop and resume training on a shared server.

The password comes from the environment or the Streamlit secret; without one, training is open only on a server
that listens on loopback. A correct password gets the browser a session token in a cookie, so that a reload keeps
the admin signed in: the server keeps only a keyed hash of each token (bound to the password, so changing the
password signs everyone out), with an expiry, in a file of mode 0600 under the runs folder. Wrong guesses are
counted per client address, each locking that address out for longer (1 s doubling to 60 s), under a server-wide
ceiling for many addresses together; every wrong guess is logged with its address.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Mapping

import streamlit as st

from . import settings
from .locks import waiting_lock

SIGN_IN_HINT = "sign in as admin to start, stop or resume training"  # why a visitor's controls are disabled
LOOPBACK = ("127.0.0.1", "localhost", "::1")
FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")  # a proxy's: the visitor is elsewhere
GUESS_DELAY_S = 1.0  # a client's first wrong guess locks it out this long; each further one doubles it...
MAX_GUESS_DELAY_S = 60.0  # ...up to this
FORGET_S = 3600.0  # a client quiet this long after its lockout starts afresh
SERVER_BURST = 20  # wrong guesses the server takes from all addresses together at once...
SERVER_RATE = 0.5  # ...and then per second: a thousand addresses still get 1,800 guesses an hour
SESSION_S = 12 * 3600  # how long a sign-in lasts, in the browser and on the server
COOKIE = "mobilenet_admin"
TOKEN_KEY = "admin_token"  # this session's sign-in token, in st.session_state
PASSWORD_KEY = "admin_password"  # the password field
REFUSAL_KEY = "admin_refusal"  # why the last sign-in failed, shown under the field
SIGNED_OUT_KEY = "admin_signed_out"  # this session signed out: the cookie it may have set is cleared
log = logging.getLogger(__name__)


def admin_password() -> str | None:
    """The configured admin password (environment first, then the Streamlit secret), or None for local use."""
    secret = settings.admin_password() or _secret()
    return (secret.strip() or None) if isinstance(secret, str) else None  # blank counts as unset


def _secret() -> object:
    try:
        return st.secrets.get("admin_password")
    except FileNotFoundError:  # no secrets file at all
        return None


def training_refused() -> str | None:
    """Why this visitor may not start or stop training: a password that is not text, or no password and either the
    server is reachable beyond loopback or the visitor is not on the server's machine (a reverse proxy on loopback
    forwards strangers)."""
    if admin_password() is not None:
        return None
    if _secret() not in (None, ""):  # admin_password = 1234 in secrets.toml: a number, which no typed text equals
        _warn_secret_not_text()
        return ("Training is switched off: the admin password in the server's secrets file is not text. The host "
                "writes it in quotes (admin_password = \"…\") to switch it on.")
    if str(st.get_option("server.address") or "") not in LOOPBACK:
        _warn_open_server()
        return (f"Training is switched off: this server is reachable from other machines and has no admin password. "
                f"The host sets {settings.ADMIN_PASSWORD_ENV} (or listens on 127.0.0.1 only) to switch it on.")
    if not local_visitor():
        _warn_proxied_server()
        return (f"Training is switched off for visitors from other machines: this server has no admin password. The "
                f"host sets {settings.ADMIN_PASSWORD_ENV} to switch it on.")
    return None


def may_train() -> bool:
    """Whether this session may start, stop, resume and delete runs now: training is on for it, and it is the
    admin's where there is a password."""
    return training_refused() is None and (admin_password() is None or signed_in())


@functools.cache
def _warn_open_server() -> None:
    log.warning("training is off: the server listens beyond loopback and %s is not set", settings.ADMIN_PASSWORD_ENV)


@functools.cache
def _warn_secret_not_text() -> None:
    log.error("training is off: admin_password in the secrets file is not text (write it in quotes)")


@functools.cache
def _warn_proxied_server() -> None:
    log.warning("training is off for visitors through a proxy or from other machines: %s is not set",
                settings.ADMIN_PASSWORD_ENV)


# ---- guesses --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The answer to one sign-in attempt."""
    accepted: bool
    checked: bool = True  # False: refused before the password was looked at (a lockout)
    wait_s: float = 0.0  # until this client's next guess is checked
    server_wide: bool = False  # the lockout is the server's, for every address

    def message(self) -> str:
        wait = f"try again in {max(1, round(self.wait_s))} s"
        if self.checked:
            return f"Wrong password: {wait}."
        where = "on this server" if self.server_wide else "from your address"
        return f"Too many wrong guesses {where}: {wait}."


@dataclass
class _Client:
    wrong: int = 0  # wrong guesses in a row
    until: float = 0.0  # no guess from it is checked before this time


def _same(given: str, expected: str) -> bool:
    """Constant-time, in the length too: the digests are compared, not the strings."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


# A connection from this machine itself with no proxy in between (an SSH tunnel to the app's port): no stranger can
# be it, so the server-wide ceiling, which many strangers' addresses together can keep reached, does not apply.
LOOPBACK_CLIENT = "loopback"


class GuessGate:
    """Password guesses, per client address: each wrong guess locks its address out for GUESS_DELAY_S doubling to
    MAX_GUESS_DELAY_S (a correct one clears it), so one guesser never slows anyone on another address; and a token
    bucket of SERVER_BURST wrong guesses refilled at SERVER_RATE a second bounds many addresses together. A guess
    made while locked out is refused without looking at the password. Nothing sleeps: a refusal says how long to wait.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, burst: int = SERVER_BURST,
                 rate: float = SERVER_RATE) -> None:
        self._clock, self._burst, self._rate = clock, burst, rate
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._allowance, self._refilled = float(burst), clock()

    def check(self, client: str, given: str, expected: str) -> Verdict:
        with self._lock:
            now = self._clock()
            self._allowance = min(self._burst, self._allowance + (now - self._refilled) * self._rate)
            self._refilled = now
            self._forget_quiet(now)
            ranges = _ranges(client)
            until = max((self._clients[r].until for r in ranges if r in self._clients), default=0.0)
            if now < until:
                return Verdict(False, checked=False, wait_s=until - now)
            if self._allowance < 1 and client != LOOPBACK_CLIENT:  # the host's own way in while strangers keep it empty
                return Verdict(False, checked=False, wait_s=(1 - self._allowance) / self._rate, server_wide=True)
            if _same(given, expected):
                for r in ranges:
                    self._clients.pop(r, None)
                log.info("admin signed in from %s", client)
                return Verdict(True)
            delays = []
            for r in ranges:
                record = self._clients.setdefault(r, _Client())
                record.wrong += 1
                delays.append(min(MAX_GUESS_DELAY_S, GUESS_DELAY_S * 2 ** (record.wrong - 1)))
                record.until = now + delays[-1]
            self._allowance -= 1
            log.warning("wrong admin password from %s (%d wrong in a row from it; its next guess in %.0f s)",
                        client, self._clients[client].wrong, max(delays))
            return Verdict(False, wait_s=max(delays))

    def _forget_quiet(self, now: float) -> None:
        quiet = [c for c, r in self._clients.items() if now > r.until + FORGET_S]
        for client in quiet:
            del self._clients[client]


def _ranges(client: str) -> list[str]:
    """A client and, for an IPv6 /64, the /56 and /48 around it: one subscriber often holds a /56 or a /48 (256 or
    65,536 /64s), from each of which a first guess would otherwise be checked at once, keeping the server-wide
    allowance empty. A wrong guess locks all three out; the strictest lockout decides."""
    try:
        network = ipaddress.IPv6Network(client)
    except ValueError:  # an IPv4 address, or the loopback client
        return [client]
    return [client, *(str(network.supernet(new_prefix=prefix)) for prefix in (56, 48))]


def client_of(peer: str | None, forwarded: str | None) -> str:
    """Who a guess comes from: an IPv4 address, or an IPv6 client's /64 (one subscriber usually holds a whole /64,
    and could otherwise guess from a new address every time). Streamlit names the connection's peer (None for
    loopback). Only a peer on loopback, the reverse proxy of DEPLOY.md, is trusted for X-Forwarded-For, and of
    that header only the last address, the one the proxy itself saw: what comes before it is whatever the client
    sent."""
    if peer is not None and not _is_loopback(peer):
        return _client(peer) or peer
    return _client((forwarded or "").split(",")[-1].strip()) or peer or LOOPBACK_CLIENT


def _client(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_local_visitor(peer: str | None, headers: Mapping[str, str]) -> bool:
    """A browser on the server's own machine: a loopback peer (Streamlit names none for loopback) whose request
    no proxy forwarded."""
    return (peer is None or _is_loopback(peer)) and not any(headers.get(name) for name in FORWARDING_HEADERS)


def local_visitor() -> bool:
    """Whether this session's browser is on the server's own machine."""
    return is_local_visitor(_text(st.context.ip_address), st.context.headers)


def client_address() -> str:
    """This session's client address, as client_of sees it."""
    return client_of(_text(st.context.ip_address), _text(st.context.headers.get("X-Forwarded-For")))


def _text(value: object) -> str | None:
    """A value of st.context if it is text (a client that sent none, or AppTest's stand-in client, has none)."""
    return value if isinstance(value, str) and value else None


@st.cache_resource(show_spinner=False)
def guess_gate() -> GuessGate:
    """The server's one gate, shared by every session."""
    return GuessGate()


# ---- sign-ins that outlive a reload -----------------------------------------------------------------


class SessionStore:
    """Admin sign-in tokens, kept as HMAC(token, password) with an expiry: the file alone gives neither a token nor
    a way to test passwords, and a token stops matching once the password changes.

    The file (mode 0600) is the store, so that a restart keeps the sign-ins and every server process on the same
    runs folder sees the others' sign-ins and sign-outs: each check reads it, each change is a read-modify-write
    under a lock. While it cannot be written, this process keeps its sign-ins in memory."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, lifetime_s: float = SESSION_S) -> None:
        self.path, self._clock, self.lifetime_s = path, clock, lifetime_s
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._unsaved = False  # the last write failed: memory holds what the file does not

    def issue(self, password: str) -> str:
        token = secrets.token_urlsafe(32)
        self._update(lambda expiry: expiry.__setitem__(_key(token, password), self._clock() + self.lifetime_s))
        return token

    def valid(self, token: str, password: str) -> bool:
        with self._lock:
            self._load()
            return self._expiry.get(_key(token, password), 0.0) > self._clock()

    def revoke(self, token: str, password: str) -> None:
        self._update(lambda expiry: expiry.pop(_key(token, password), None))

    def _update(self, change: Callable[[dict[str, float]], object]) -> None:
        with self._lock, waiting_lock(self.path.with_name(f"{self.path.name}.lock")):
            self._load()
            change(self._expiry)
            self._write()

    def _load(self) -> None:
        if self._unsaved:
            return
        try:
            stored = json.loads(self.path.read_text())
            self._expiry = {str(k): float(v) for k, v in stored["sessions"].items()}
        except FileNotFoundError:
            self._expiry = {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("admin sign-ins in %s are unreadable, going on without them: %s", self.path, e)
            self._expiry = {}

    def _write(self) -> None:
        now = self._clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"sessions": self._expiry}, f)
            os.replace(temporary, self.path)
            self._unsaved = False
        except OSError as e:  # the sign-ins still hold in this process until it ends
            log.warning("could not save admin sign-ins to %s: %s", self.path, e)
            temporary.unlink(missing_ok=True)
            self._unsaved = True


def _key(token: str, password: str) -> str:
    return hmac.new(token.encode(), password.encode(), hashlib.sha256).hexdigest()


def sessions_file() -> Path:
    return settings.runs_dir() / ".admin-sessions.json"


@st.cache_resource(show_spinner=False)
def _session_store(path: Path) -> SessionStore:
    return SessionStore(path)


def session_store() -> SessionStore:
    return _session_store(sessions_file())


# ---- the page's side ------------------------------------------------------------------------------


def signed_in() -> bool:
    """Whether this session is the admin's: its token, from a sign-in here or from the browser's cookie (a reload,
    another tab), is valid now. Checked on every run, so that signing out, expiry and a new password take effect."""
    password = admin_password()
    if password is None:
        return True
    for token in (st.session_state.get(TOKEN_KEY), browser_token()):
        if token and session_store().valid(token, password):
            st.session_state[TOKEN_KEY] = token
            return True
    st.session_state.pop(TOKEN_KEY, None)
    return False


def sign_in() -> None:
    """The password field's on_change: check the guess, sign in or say why not, and empty the field."""
    given = st.session_state.get(PASSWORD_KEY) or ""
    st.session_state[PASSWORD_KEY] = ""
    expected = admin_password()
    if not given or expected is None:
        return
    verdict = guess_gate().check(client_address(), given, expected)
    if verdict.accepted:
        st.session_state[TOKEN_KEY] = session_store().issue(expected)
        st.session_state.pop(REFUSAL_KEY, None)
        st.session_state.pop(SIGNED_OUT_KEY, None)
    else:
        st.session_state[REFUSAL_KEY] = verdict.message()


def sign_out() -> None:
    """Revoke this session's token on the server (the cookie, if the browser keeps it, no longer signs in)."""
    token, password = st.session_state.pop(TOKEN_KEY, None), admin_password()
    st.session_state[SIGNED_OUT_KEY] = True
    if token and password:
        session_store().revoke(token, password)


def browser_token() -> str | None:
    """The sign-in token the browser sent when this session connected (a cookie), if any."""
    return _text(st.context.cookies.get(COOKIE))


def keep_in_browser() -> None:
    """Give the browser this session's token as a cookie, unless it sent it already."""
    token = st.session_state.get(TOKEN_KEY)
    if token and browser_token() != token:
        _set_cookie(token, SESSION_S)


def forget_in_browser() -> None:
    """Clear the cookie of a sign-in that no longer holds (signed out, expired, or the password changed)."""
    if browser_token() or st.session_state.get(SIGNED_OUT_KEY):
        _set_cookie("", 0)


def _set_cookie(value: str, max_age: int) -> None:
    """A cookie on the app's origin, sent with the websocket the next page load opens. Only a script can set it
    (Streamlit's server sets none), so it cannot be HttpOnly; Secure whenever the page is served over https."""
    script = (f"document.cookie = {json.dumps(f'{COOKIE}={value}')} + '; Path=/; Max-Age={max_age}; SameSite=Strict'"
              f" + (location.protocol === 'https:' ? '; Secure' : '');")
    with st.container(key=COOKIE):  # hidden, so that it takes no room where it is written
        st.html(f"<style>.st-key-{COOKIE} {{ display: none; }}</style><script>{script}</script>",
                unsafe_allow_javascript=True)
