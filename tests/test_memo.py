import pytest

from mobilenet import memo
from mobilenet.memo import Memo


def test_keeps_its_newest_entries() -> None:
    m: Memo[str] = Memo(size=2)
    m.put("a", "1")
    m.put("b", "2")
    m.put("a", "1 again")  # written again: the newest
    m.put("c", "3")
    assert (m.get("a"), m.get("b"), m.get("c")) == ("1 again", None, "3")


def test_forgets_an_entry_older_than_its_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(memo.time, "monotonic", lambda: now[0])
    m: Memo[str] = Memo(size=4, max_age_s=60.0)
    m.put("broken.pt", "not a checkpoint")
    now[0] += 59.0
    assert m.get("broken.pt") == "not a checkpoint"
    now[0] += 1.0
    assert m.get("broken.pt") is None


def test_refuses_a_size_that_keeps_nothing() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Memo(size=0)
