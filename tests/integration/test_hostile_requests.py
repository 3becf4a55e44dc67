"""Requests no browser sends, each of which once answered 500: now a clear 4xx, or the usual answer.

Found by probing the running service with hand-made requests: a multipart
part without a name, JSON nested past the parser's recursion, an unparseable
Referer or ``next``, a Host werkzeug cannot route, ids past the id columns' 32 bits.
"""

import pytest
from sqlalchemy import select

from service.extensions import db
from service.models import Subscriber
from service.tokens import TokenPurpose, signer
from tests.conftest import PUBLIC_BASE_URL, another_app

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EMAIL = "peggy@example.com"
FORM = {"email": EMAIL, "topics": "marvel-news"}
DEEP_JSON = "[" * 5000 + "]" * 5000  # past Python's recursion limit, under the forms' 16 KB body limit


@pytest.fixture
def service(stack, app):
    """The app with the admin API open and, with no SMTP_HOST, the embedded outbox."""
    with another_app(stack, ADMIN_API_TOKEN=TOKEN, SMTP_HOST="") as served:
        yield served


@pytest.fixture
def web(service):
    return service.test_client()


def _stored() -> list[str]:
    db.session.rollback()
    return list(db.session.scalars(select(Subscriber.email)))


def test_a_multipart_part_without_a_name_is_a_field_error(web):
    body = (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b\r\n"
            b'Content-Disposition: form-data; name="email"\r\n\r\n' + EMAIL.encode() + b"\r\n--b--\r\n")
    response = web.post("/subscribe", data=body, content_type="multipart/form-data; boundary=b",
                        headers={"Accept": "application/json"})
    assert response.status_code == 422
    assert response.json["errors"]["body"] == "Every field needs a name."
    assert _stored() == []


@pytest.mark.parametrize(("path", "status", "errors"), [
    ("/subscribe", 422, {"body": "Send a JSON object with the fields as keys."}),
    ("/api/v1/topics", 422, {"body": "is not valid JSON"}),
    ("/api/v1/articles", 422, {"body": "is not valid JSON"}),
    ("/api/v1/no-such-thing", 404, None),
])
def test_json_nested_too_deeply_to_parse_is_answered_as_malformed_json(web, path, status, errors):
    response = web.post(path, data=DEEP_JSON, content_type="application/json",
                        headers={"Accept": "application/json", **AUTH})
    assert response.status_code == status
    assert response.json.get("errors") == errors


def test_json_nested_deeply_but_parseable_reaches_the_field_checks(web):
    # 400 levels parse, but a recursive walk for NUL characters overflowed the stack on them.
    nested = "[" * 400 + "]" * 400
    response = web.post("/api/v1/topics", data=f'{{"slug": "deep", "name": "Deep", "tags": {nested}}}',
                        content_type="application/json", headers=AUTH)
    assert response.status_code == 422
    assert response.json["errors"] == {"tags": "must be a list of strings"}


def test_a_referer_that_is_not_a_url_is_a_foreign_origin(web):
    response = web.post("/subscribe", data=FORM, headers={"Referer": "http://[::1"})
    assert response.status_code == 403
    assert _stored() == []


@pytest.mark.parametrize("next_url", ["http://[::1", f"{PUBLIC_BASE_URL}/\r\nSet-Cookie: x=y",
                                      f"{PUBLIC_BASE_URL}/thanks\x7f"])
def test_a_next_that_cannot_be_a_redirect_gets_the_check_your_inbox_page(web, next_url):
    response = web.post("/subscribe", data={**FORM, "next": next_url})
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert "Check your inbox" in response.get_data(as_text=True)
    assert _stored() == [EMAIL]


def test_a_next_on_our_own_origin_still_redirects(web):
    response = web.post("/subscribe", data={**FORM, "next": f"{PUBLIC_BASE_URL}/thanks"})
    assert (response.status_code, response.headers["Location"]) == (303, f"{PUBLIC_BASE_URL}/thanks")


@pytest.mark.parametrize("path", ["/healthz", "/subscribe", "/no-such-page"])
def test_a_host_header_werkzeug_cannot_route_is_a_plain_400(web, path):
    response = web.get(path, headers={"Host": "a" * 64})  # a DNS label is at most 63
    assert response.status_code == 400
    assert response.mimetype == "text/plain"
    assert response.get_data(as_text=True) == "The request could not be understood.\n"


@pytest.mark.parametrize("email_id", [2**31 - 1, 2**31, 2**63, 10**30])
@pytest.mark.parametrize("path", ["/outbox/{}", "/outbox/{}/raw"])
def test_an_outbox_id_past_the_id_columns_is_not_found(web, path, email_id):
    assert web.get(path.format(email_id)).status_code == 404


@pytest.mark.parametrize("subscriber_id", [2**31, 2**63, -1])
@pytest.mark.parametrize("path", ["/unsubscribe/{}", "/preferences/{}", "/preferences/{}/data"])
def test_a_genuine_token_naming_an_id_no_row_can_have_is_refused(web, path, subscriber_id):
    purpose = TokenPurpose.UNSUBSCRIBE if path.startswith("/unsubscribe") else TokenPurpose.PREFERENCES
    token = signer().sign(purpose, {"sid": subscriber_id})  # only a holder of SECRET_KEY can make one
    assert web.get(path.format(token)).status_code == 400
    if path.startswith("/unsubscribe"):
        assert web.post(path.format(token)).status_code == 400


def test_a_topic_cannot_be_renamed_to_nothing(web):
    response = web.patch("/api/v1/topics/marvel-news", json={"name": "   "}, headers=AUTH)
    assert response.status_code == 422
    assert response.json["errors"] == {"name": "is required"}
    assert web.get("/api/v1/topics/marvel-news", headers=AUTH).json["name"] == "Marvel News"


def test_the_shell_cannot_blank_a_topic_name_either(service, web):
    runner = service.test_cli_runner()
    assert runner.invoke(args=["topics", "update", "marvel-news", "--name", "   "]).exit_code != 0
    assert runner.invoke(args=["topics", "create", "blank-topic", "  "]).exit_code != 0
    topics = {t["slug"]: t["name"] for t in web.get("/api/v1/topics", headers=AUTH).json["topics"]}
    assert topics["marvel-news"] == "Marvel News" and "blank-topic" not in topics
