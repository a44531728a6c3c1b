"""auth.py in-process: the rooms claim, what a token may enter and see (no Kafka)."""
from __future__ import annotations

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request

from kchat_faust import auth
from kchat_faust.reads import advanced

SECRET = "unit-secret-of-at-least-32-bytes-long!!"


def request_with(claims: dict):
    raw = jwt.encode(claims, SECRET, algorithm="HS256")
    return make_mocked_request("GET", "/", headers={"Authorization": f"Bearer {raw}"})


def test_a_token_without_the_rooms_claim_enters_every_room():
    found = auth.token(request_with({"sub": "ann"}), SECRET)
    assert found == auth.Token("ann", None, False)
    auth.check_room(found, "anything")
    assert auth.visible(found, ["a", {"room": "b"}]) == ["a", {"room": "b"}]


@pytest.mark.parametrize("room, allowed", [
    ("team-a", True), ("team-", True), ("general", False), ("teamx", False), ("ops", True), ("ops2", False),
])
def test_patterns_are_exact_names_or_prefixes(room, allowed):
    found = auth.token(request_with({"sub": "ann", "rooms": ["team-*", "ops"]}), SECRET)
    assert found.may_enter(room) is allowed
    if allowed:
        auth.check_room(found, room)
    else:
        with pytest.raises(auth.AuthError) as refused:
            auth.check_room(found, room)
        assert refused.value.status == 403 and repr(room) in refused.value.message


def test_lists_keep_only_the_rooms_the_token_may_enter_in_their_order():
    found = auth.Token("ann", ("team-*",))
    rooms = [{"room": "general"}, {"room": "team-b"}, {"room": "team-a"}]
    assert auth.visible(found, rooms) == [{"room": "team-b"}, {"room": "team-a"}]
    assert auth.visible(found, ["x", "team-z"]) == ["team-z"]
    assert auth.visible(auth.Token("ann", ()), rooms) == []


@pytest.mark.parametrize("claim", ["team-*", ["team-**"], ["bad room"], [3], ["*team"], {"team": 1}])
def test_a_malformed_rooms_claim_is_a_401_not_every_room(claim):
    with pytest.raises(auth.AuthError) as refused:
        auth.token(request_with({"sub": "ann", "rooms": claim}), SECRET)
    assert refused.value.status == 401 and "'rooms'" in refused.value.message


def test_only_a_peer_claim_of_true_makes_a_peer():
    assert auth.token(request_with({"sub": "kchat-worker", "peer": True}), SECRET).peer is True
    assert auth.token(request_with({"sub": "x", "peer": "true"}), SECRET).peer is False


def test_nobody_marks_read_or_posts_as_somebody_else():
    found = auth.Token("ann")
    auth.check_author(found, "ann")
    auth.check_author(None, "bob")  # authentication off
    with pytest.raises(auth.AuthError) as refused:
        auth.check_author(found, "bob", "mark read for")
    assert refused.value.status == 403 and "mark read for 'bob'" in refused.value.message


def test_a_read_position_only_moves_forward():
    assert advanced(None, {"a": 3}) == {"a": 3}
    assert advanced({"a": 5}, {"a": 4}) is None  # older: nothing to write
    assert advanced({"a": 5}, {"a": 5}) is None
    assert advanced({"a": 5, "b": 1}, {"a": 4, "b": 2}) == {"a": 5, "b": 2}
