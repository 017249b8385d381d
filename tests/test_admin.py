"""The admin gate: per-client back-off under a server-wide ceiling, client addresses behind the proxy, sign-in
tokens that survive a reload and a restart, and the training page's sign-in through AppTest."""

from __future__ import annotations

import logging
import stat
import threading
import time
from pathlib import Path

import pytest
from helpers import FakeClock, isolate_app, make_run
from streamlit.testing.v1 import AppTest

from mobilenet import admin, settings
from mobilenet.admin import GuessGate, SessionStore, Verdict, client_of
from mobilenet.jobs import JobManager

PASSWORD = "s3cret"
PAGE = Path(__file__).resolve().parent.parent / "app_pages" / "training.py"


# ---- the gate ---------------------------------------------------------------------------------------


def test_wrong_guesses_lock_their_address_out_for_doubling_times() -> None:
    clock = FakeClock()
    gate = GuessGate(clock)
    waits = []
    for _ in range(8):
        verdict = gate.check("203.0.113.7", "guess", PASSWORD)
        assert verdict.checked and not verdict.accepted
        waits.append(verdict.wait_s)
        clock.advance(verdict.wait_s)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_locked_out_address_is_refused_unchecked_even_with_the_password() -> None:
    clock = FakeClock()
    gate = GuessGate(clock)
    gate.check("203.0.113.7", "guess", PASSWORD)
    clock.advance(0.5)
    verdict = gate.check("203.0.113.7", PASSWORD, PASSWORD)
    assert verdict == Verdict(False, checked=False, wait_s=0.5)
    assert verdict.message() == "Too many wrong guesses from your address: try again in 1 s."
    clock.advance(0.5)
    assert gate.check("203.0.113.7", PASSWORD, PASSWORD).accepted
    assert gate.check("203.0.113.7", "guess", PASSWORD).wait_s == 1  # success started it afresh


def test_one_guesser_never_slows_the_admin_on_another_address() -> None:
    clock = FakeClock()
    gate = GuessGate(clock)
    for _ in range(5):
        gate.check("203.0.113.7", "guess", PASSWORD)
        clock.advance(0.1)
    assert gate.check("203.0.113.7", "guess", PASSWORD).checked is False
    assert gate.check("198.51.100.1", PASSWORD, PASSWORD).accepted


def test_an_ipv6_guesser_on_new_addresses_of_its_64_never_slows_the_admin() -> None:
    clock = FakeClock()
    gate = GuessGate(clock)
    checked = 0
    for i in range(600):  # a minute of guesses, each from a new address of one /64
        checked += gate.check(client_of(None, f"2001:db8::{i:x}"), "guess", PASSWORD).checked
        clock.advance(0.1)
    assert checked == 6  # 1 + 2 + 4 + 8 + 16 s of lockouts, then 32 s
    assert gate.check(client_of(None, "198.51.100.1"), PASSWORD, PASSWORD).accepted


def test_an_ipv6_subscriber_rotating_through_its_56_or_48_is_locked_out_as_one() -> None:
    """A /56 holds 256 /64s, a /48 65,536: each new /64 got its first guess checked, so one home connection kept the
    server-wide allowance empty and locked the admin out everywhere."""
    clock = FakeClock()
    gate = GuessGate(clock)
    checked = 0
    for i in range(400):  # 40 s of guesses, each from another /64 of one /48, the first 256 in one /56
        checked += gate.check(client_of(None, f"2001:db8:5:{i:x}::1"), "guess", PASSWORD).checked
        clock.advance(0.1)
    assert checked == 6  # 1 + 2 + 4 + 8 + 16 s of lockouts, then 32 s: as from one address
    refused = gate.check(client_of(None, "2001:db8:5:ff00::1"), "guess", PASSWORD)
    assert not refused.checked and refused.message().startswith("Too many wrong guesses from your address")
    assert gate.check(client_of(None, "2001:db9::1"), PASSWORD, PASSWORD).accepted  # the admin, another network
    assert gate.check(client_of(None, "198.51.100.1"), PASSWORD, PASSWORD).accepted


def test_many_addresses_together_meet_a_server_wide_ceiling() -> None:
    clock = FakeClock()
    gate = GuessGate(clock, burst=5, rate=0.5)
    for i in range(5):
        assert gate.check(f"203.0.113.{i}", "guess", PASSWORD).checked
    refused = gate.check("203.0.113.99", "guess", PASSWORD)
    assert (refused.checked, refused.server_wide, refused.wait_s) == (False, True, 2.0)
    assert refused.message() == "Too many wrong guesses on this server: try again in 2 s."
    clock.advance(2.0)  # one guess's worth refilled
    assert gate.check("203.0.113.99", "guess", PASSWORD).checked
    assert not gate.check("203.0.113.100", "guess", PASSWORD).checked


def test_strangers_keeping_the_ceiling_reached_never_lock_out_the_host_on_the_machine_itself() -> None:
    """Forty networks (/48s), each guessing whenever its own lockout allows, keep the server-wide ceiling reached
    for good: the host, signing in over a tunnel to the app's port, still gets in."""
    clock = FakeClock()
    gate = GuessGate(clock)
    strangers = [client_of(None, f"2001:db8:{i:x}::1") for i in range(40)]
    host_in = stranger_in = 0
    for second in range(600):
        for stranger in strangers:
            stranger_in += gate.check(stranger, "guess", PASSWORD).accepted
        if second % 10 == 0:
            assert not gate.check("198.51.100.1", PASSWORD, PASSWORD).accepted  # the admin from elsewhere: refused
            host_in += gate.check(client_of(None, None), PASSWORD, PASSWORD).accepted
        clock.advance(1.0)
    assert stranger_in == 0 and host_in == 60


def test_an_address_quiet_for_an_hour_starts_afresh() -> None:
    clock = FakeClock()
    gate = GuessGate(clock)
    for _ in range(3):
        clock.advance(gate.check("203.0.113.7", "guess", PASSWORD).wait_s)
    clock.advance(admin.FORGET_S + 1)
    assert gate.check("203.0.113.7", "guess", PASSWORD).wait_s == 1


def test_every_wrong_guess_is_logged_with_its_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mobilenet.admin")
    clock = FakeClock()
    gate = GuessGate(clock)
    for address in ("203.0.113.7", "2001:db8::1", "203.0.113.7"):
        clock.advance(10)
        gate.check(address, "hunter2", PASSWORD)
    said = [r.getMessage() for r in caplog.records if "wrong admin password" in r.getMessage()]
    assert len(said) == 3
    assert "from 203.0.113.7 (1 wrong" in said[0] and "from 2001:db8::1 (1 wrong" in said[1]
    assert "from 203.0.113.7 (2 wrong" in said[2]
    assert all("hunter2" not in line and PASSWORD not in line for line in said)  # never the guess itself


def test_parallel_guesses_from_one_address_get_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    same = admin._same
    monkeypatch.setattr(admin, "_same", lambda given, expected: time.sleep(0.05) or same(given, expected))  # overlap
    gate = GuessGate()
    verdicts: list[Verdict] = []
    guesses = [threading.Thread(target=lambda i=i: verdicts.append(gate.check("203.0.113.7", f"guess{i}", PASSWORD)))
               for i in range(8)]
    for guess in guesses:
        guess.start()
    for guess in guesses:
        guess.join()
    assert sum(v.checked for v in verdicts) == 1


@pytest.mark.parametrize("peer, forwarded, client", [
    ("203.0.113.7", None, "203.0.113.7"),
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # a direct peer cannot claim another address
    (None, None, "loopback"),
    (None, "198.51.100.1", "198.51.100.1"),  # behind the proxy on loopback
    (None, "10.0.0.1, 198.51.100.1", "198.51.100.1"),  # what the client claimed comes first, and is ignored
    (None, "2001:db8::5", "2001:db8::/64"),  # an IPv6 client is its /64: the addresses a subscriber holds
    ("2001:db8::1:2:3:4", None, "2001:db8::/64"), ("2001:db8:0:1::5", None, "2001:db8:0:1::/64"),
    (None, "::ffff:198.51.100.1", "198.51.100.1"),
    ("127.0.0.2", "198.51.100.1", "198.51.100.1"),
    (None, "not-an-address", "loopback"),
])
def test_the_client_address_trusts_the_forwarded_header_only_from_loopback(peer: str | None, forwarded: str | None,
                                                                           client: str) -> None:
    assert client_of(peer, forwarded) == client


# ---- sign-in tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("peer,headers,local", [
    (None, {}, True), ("127.0.0.1", {}, True), ("::1", {}, True),
    (None, {"X-Forwarded-For": "203.0.113.7"}, False), (None, {"X-Real-IP": "203.0.113.7"}, False),
    (None, {"Forwarded": "for=203.0.113.7"}, False), ("203.0.113.7", {}, False), ("192.168.1.20", {}, False),
])
def test_a_local_visitor_is_on_loopback_and_not_forwarded(peer: str | None, headers: dict, local: bool) -> None:
    assert admin.is_local_visitor(peer, headers) is local


def test_a_token_signs_in_until_revoked_expired_or_the_password_changes(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SessionStore(tmp_path / "sessions.json", clock, lifetime_s=100)
    token = store.issue(PASSWORD)
    assert store.valid(token, PASSWORD)
    assert not store.valid(token + "x", PASSWORD)
    assert not store.valid(token, "another password")
    other = store.issue(PASSWORD)
    store.revoke(other, PASSWORD)
    assert not store.valid(other, PASSWORD) and store.valid(token, PASSWORD)
    clock.advance(101)
    assert not store.valid(token, PASSWORD)


def test_tokens_outlive_a_restart_as_hashes_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "runs" / ".admin-sessions.json"
    token = SessionStore(path).issue(PASSWORD)  # the runs folder does not exist yet
    assert path.with_name(f"{path.name}.lock").exists()  # even the first write held the lock
    assert SessionStore(path).valid(token, PASSWORD)  # a new server process reads them back
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and PASSWORD not in text


def test_server_processes_on_one_runs_folder_share_sign_ins_and_sign_outs(tmp_path: Path) -> None:
    path = tmp_path / "runs" / ".admin-sessions.json"
    first, second = SessionStore(path), SessionStore(path)  # two servers, or one restarted beside the other
    mine, theirs = first.issue(PASSWORD), second.issue(PASSWORD)  # neither write loses the other's token
    assert all(store.valid(token, PASSWORD) for store in (first, second) for token in (mine, theirs))
    second.revoke(mine, PASSWORD)  # signing out on one server signs out on both
    assert not first.valid(mine, PASSWORD) and first.valid(theirs, PASSWORD)
    path.unlink()  # deleting the file signs every browser out, without a restart
    assert not first.valid(theirs, PASSWORD) and not second.valid(theirs, PASSWORD)


def test_an_unreadable_file_starts_empty_and_an_unwritable_one_still_signs_in(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text("not json")
    store = SessionStore(path)
    (tmp_path / "sessions.json").unlink()
    (tmp_path / "sessions.json").mkdir()  # a folder where the file should be: it cannot be written
    token = store.issue(PASSWORD)
    assert store.valid(token, PASSWORD) and [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


# ---- the training page --------------------------------------------------------------------------------


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """An isolated app with an admin password, a gate on a fake clock, and no cookie from the browser."""
    isolate_app(tmp_path, monkeypatch)
    monkeypatch.setenv(settings.ADMIN_PASSWORD_ENV, PASSWORD)
    clock = FakeClock()
    gate = GuessGate(clock)
    monkeypatch.setattr(admin, "guess_gate", lambda: gate)
    monkeypatch.setattr(admin, "browser_token", lambda: None)
    return clock


def open_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def password_field(at: AppTest):
    return next(t for t in at.text_input if t.label == "Admin password")


def start_disabled(at: AppTest) -> bool:
    return next(b for b in at.button if b.label == "Start").disabled


def cookie_scripts(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html") if "document.cookie" in h.proto.body]


def test_a_reload_keeps_the_admin_signed_in_and_sign_out_ends_it(gated: FakeClock,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page()
    password_field(at).input(PASSWORD).run()
    assert not start_disabled(at)
    token = at.session_state[admin.TOKEN_KEY]
    [script] = cookie_scripts(at)  # the browser is given the token...
    assert f"{admin.COOKIE}={token}" in script and "SameSite=Strict" in script and "Max-Age=43200" in script

    monkeypatch.setattr(admin, "browser_token", lambda: token)  # ...and sends it when the page is loaded again
    reloaded = open_page()
    assert not start_disabled(reloaded) and not cookie_scripts(reloaded)
    assert any("Signed in as admin" in c.value for c in reloaded.caption)

    next(b for b in reloaded.button if b.label == "Sign out").click().run()
    assert start_disabled(reloaded)
    [cleared] = cookie_scripts(reloaded)
    assert f"{admin.COOKIE}=" in cleared and "Max-Age=0" in cleared
    assert start_disabled(open_page())  # the browser's cookie no longer signs in, even if kept


def test_signing_out_clears_the_cookie_this_session_set(gated: FakeClock) -> None:
    at = open_page()
    password_field(at).input(PASSWORD).run()
    assert cookie_scripts(at)
    next(b for b in at.button if b.label == "Sign out").click().run()
    [cleared] = cookie_scripts(at)
    assert "Max-Age=0" in cleared
    password_field(at).input(PASSWORD).run()
    [kept] = cookie_scripts(at)  # signed in again: the new token, and no clearing after it
    assert f"{admin.COOKIE}={at.session_state[admin.TOKEN_KEY]}" in kept


def test_a_session_whose_token_lapsed_takes_the_one_its_browser_sent(gated: FakeClock,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page()
    password_field(at).input(PASSWORD).run()
    other_tab = admin.session_store().issue(PASSWORD)  # a sign-in in another tab, whose cookie this tab sent
    monkeypatch.setattr(admin, "browser_token", lambda: other_tab)
    admin.session_store().revoke(at.session_state[admin.TOKEN_KEY], PASSWORD)
    at.run()
    assert not start_disabled(at) and at.session_state[admin.TOKEN_KEY] == other_tab


def test_a_new_password_signs_out_every_browser(gated: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page()
    password_field(at).input(PASSWORD).run()
    token = at.session_state[admin.TOKEN_KEY]
    monkeypatch.setattr(admin, "browser_token", lambda: token)
    monkeypatch.setenv(settings.ADMIN_PASSWORD_ENV, "a new password")
    assert start_disabled(open_page())
    at.run()
    assert start_disabled(at)  # the open session too


def test_a_guesser_is_locked_out_and_the_admin_elsewhere_is_not(gated: FakeClock,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "client_address", lambda: "203.0.113.7")
    guesser = open_page()
    password_field(guesser).input("guess").run()
    assert guesser.error[0].value == "Wrong password: try again in 1 s."
    assert password_field(guesser).value == ""  # emptied for the next try
    password_field(guesser).input(PASSWORD).run()
    assert guesser.error[0].value == "Too many wrong guesses from your address: try again in 1 s."
    assert start_disabled(guesser)

    monkeypatch.setattr(admin, "client_address", lambda: "198.51.100.1")
    owner = open_page()
    password_field(owner).input(PASSWORD).run()
    assert not start_disabled(owner) and not owner.error


def test_a_sign_in_revoked_elsewhere_disables_the_live_views_controls_at_once(gated: FakeClock,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import local_script_runner

    runs = admin.settings.runs_dir()
    make_run(runs, "old", updated=1.0)
    make_run(runs, "new", updated=2.0)
    at = open_page()
    password_field(at).input(PASSWORD).run()
    at.session_state["delete_asked"] = "old"  # the admin asked to delete a run: Confirm is on offer
    at.run()
    admin.sessions_file().unlink()  # signed out in another tab (or the sign-in expired)
    # The live view's own runs (its timer, a click inside it) run the fragment alone, not the page.
    live = next(iter(at._fragment_storage._fragments))
    rerun = local_script_runner.RerunData
    monkeypatch.setattr(local_script_runner, "RerunData", lambda **kw: rerun(**kw, fragment_id_queue=[live]))
    deleted = []
    monkeypatch.setattr(JobManager, "delete", lambda self, run: deleted.append(run))
    next(b for b in at.button if b.label == "Confirm").click().run()
    assert deleted == [] and (runs / "old").exists()
    monkeypatch.setattr(local_script_runner, "RerunData", rerun)
    assert start_disabled(at.run())
