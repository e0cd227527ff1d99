"""Wire compatibility of linq-sim with Linq's official Python client (`linq-python`).

Starts the linq-sim binary (env LINQ_SIM_BIN, default target/debug/linq-sim) on free loopback
ports with a throwaway secret and token, plus a small HTTP receiver as its webhook target.
The official client talks to the simulator with strict response validation, and the client's
own `webhooks.unwrap()` verifies every delivery the receiver got.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import http.server
import json
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import standardwebhooks

import linq
from linq.types import (
    Chat,
    ChatCreateResponse,
    Message,
    MessageAddReactionResponse,
    MessageDeliveredWebhookEvent,
    MessageReceivedWebhookEvent,
    MessageSentWebhookEvent,
    ReactionAddedWebhookEvent,
)
from linq.types.chats import MessageSendResponse

REPO = Path(__file__).resolve().parents[2]
SIM_BIN = os.environ.get("LINQ_SIM_BIN", str(REPO / "target" / "debug" / "linq-sim"))
BOT = "+15550001000"
ALICE = "+15550002000"
BOB = "+15550003000"
CAROL = "+15550004000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Receiver:
    """The webhook target: records every delivery; `fail[text]` lists statuses to answer, in
    turn, to deliveries of the message with that text (other events are answered 200)."""

    def __init__(self) -> None:
        self.deliveries: list[dict] = []
        self.fail: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    text = json.loads(body)["data"]["parts"][0]["value"]
                except (ValueError, KeyError, IndexError, TypeError):
                    text = None
                with receiver.lock:
                    plan = receiver.fail.get(text) or []
                    status = plan.pop(0) if plan else 200
                    receiver.deliveries.append(
                        {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "answered": status}
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_event(self, event_id: str) -> list[dict]:
        with self.lock:
            return [d for d in self.deliveries if d["headers"].get("webhook-id") == event_id]

    def of_type(self, event_type: str, pred=lambda e: True) -> list[dict]:
        with self.lock:
            found = []
            for d in self.deliveries:
                e = json.loads(d["body"])
                if e["event_type"] == event_type and pred(e):
                    found.append(d)
            return found


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.unix_path)
        self.sock = s


class Control:
    """Client of linq-sim's control API over its Unix socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def call(self, method: str, url: str, body=None):
        conn = UnixHTTPConnection(self.path)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, url, body=data, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def get(self, url: str):
        status, body = self.call("GET", url)
        assert status == 200, (url, status, body)
        return body

    def post(self, url: str, body=None):
        status, out = self.call("POST", url, body or {})
        assert status == 200, (url, status, out)
        return out


@pytest.fixture(scope="module")
def env():
    if not os.access(SIM_BIN, os.X_OK):
        pytest.fail(f"linq-sim binary not found at {SIM_BIN}; build it with `cargo build -p linq-sim`")
    tmp = tempfile.TemporaryDirectory(prefix="linq-sim-test-")
    d = Path(tmp.name)
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    token = "test-token-" + secrets.token_hex(16)
    (d / "secret").write_text(secret + "\n")
    (d / "token").write_text(token + "\n")
    receiver = Receiver()
    api_port, control_port = free_port(), free_port()
    sock = d / "run" / "control.sock"
    log = open(d / "sim.log", "w+b")
    proc = subprocess.Popen(
        [
            SIM_BIN,
            "--api-listen", f"127.0.0.1:{api_port}",
            "--control-socket", str(sock),
            "--control-listen", f"127.0.0.1:{control_port}",
            "--webhook-url", f"http://127.0.0.1:{receiver.port}/api/linq/inbound",
            "--webhook-secret-file", str(d / "secret"),
            "--token-file", str(d / "token"),
            "--bot-handle", BOT,
            "--retry-base-ms", "50",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    control = Control(str(sock))

    def up():
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError("linq-sim exited early:\n" + log.read().decode(errors="replace"))
        try:
            return control.call("GET", "/control/health")[1]
        except OSError:
            return None

    wait_until(up, what="linq-sim to come up")
    client = linq.LinqAPIV3(
        api_key=token,
        webhook_secret=secret,
        base_url=f"http://127.0.0.1:{api_port}/api/partner",
        max_retries=0,
        _strict_response_validation=True,
        http_client=linq.DefaultHttpxClient(trust_env=False),
    )
    yield {
        "client": client,
        "control": control,
        "receiver": receiver,
        "secret": secret,
        "token": token,
        "api_port": api_port,
        "control_port": control_port,
        "proc": proc,
        "sock": sock,
    }
    proc.terminate()
    try:
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    receiver.server.shutdown()
    log.close()
    tmp.cleanup()
    assert rc == 0, f"linq-sim exited with {rc} on SIGTERM"


def unwrap(client: linq.LinqAPIV3, delivery: dict):
    return client.webhooks.unwrap(delivery["body"].decode(), headers=delivery["headers"])


def typed_event(client: linq.LinqAPIV3, delivery: dict, cls):
    """Verify a delivery with the client's unwrap(), then validate it strictly as `cls`.

    unwrap() only constructs (no validation) and, because every event model types `event_type`
    as the full WebhookEventType union, cannot tell same-shaped events apart (a
    message.delivered comes back as a MessageSentWebhookEvent). So check the event type it
    read and validate the payload against the specific model.
    """
    ev = unwrap(client, delivery)
    payload = json.loads(delivery["body"])
    assert ev.event_type == payload["event_type"]
    assert ev.event_id == payload["event_id"] == delivery["headers"]["webhook-id"]
    strict = cls.model_validate(payload)
    assert isinstance(strict, cls)
    return strict


def test_control_reachable_over_tcp_too(env):
    conn = http.client.HTTPConnection("127.0.0.1", env["control_port"], timeout=10)
    conn.request("GET", "/control/health")
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["ok"] is True


def test_chat_lifecycle_with_official_client(env):
    client, control = env["client"], env["control"]

    created = client.chats.create(
        from_=BOT, to=[ALICE], message={"parts": [{"type": "text", "value": "Hello from the bot"}]}
    )
    assert isinstance(created, ChatCreateResponse)
    chat_id = created.chat.id
    assert created.chat.is_group is False
    assert created.chat.service == "iMessage"
    assert created.chat.message.parts[0].value == "Hello from the bot"
    assert created.chat.message.delivery_status == "queued"
    assert created.chat.message.from_handle.handle == BOT and created.chat.message.from_handle.is_me

    chat = client.chats.retrieve(chat_id)
    assert isinstance(chat, Chat)
    assert chat.id == chat_id and chat.is_group is False and chat.is_archived is False
    assert chat.health_status.status == "HEALTHY"
    me = [h for h in chat.handles if h.is_me]
    assert [h.handle for h in me] == [BOT]
    assert {h.handle for h in chat.handles} == {BOT, ALICE}

    # Alice writes; the bot replies to her message, twice with the same idempotency key.
    inbound = control.post("/control/inbound", {"from": ALICE, "text": "is the deploy done?"})
    assert inbound["chat_id"] == chat_id
    assert inbound["status"] == 200
    content = {
        "parts": [{"type": "text", "value": "On it!"}],
        "reply_to": {"message_id": inbound["message_id"]},
        "idempotency_key": "reply-" + inbound["message_id"],
    }
    raw = client.chats.messages.with_raw_response.send(chat_id, message=content)
    assert raw.status_code == 202
    sent = raw.parse()
    assert isinstance(sent, MessageSendResponse)
    assert sent.chat_id == chat_id
    assert sent.message.reply_to.message_id == inbound["message_id"]
    assert sent.message.reply_to.part_index == 0
    assert sent.message.parts[0].value == "On it!"
    assert sent.message.is_read is False

    raw2 = client.chats.messages.with_raw_response.send(chat_id, message=content)
    assert raw2.status_code in (200, 202)
    assert raw2.parse().message.id == sent.message.id
    outbound = control.get(f"/control/sent?chat_id={chat_id}")
    assert [m["text"] for m in outbound] == ["Hello from the bot", "On it!"]
    assert outbound[1]["idempotency_key"] == content["idempotency_key"]
    assert outbound[1]["reply_to"] == inbound["message_id"]

    # Typing, read, reaction.
    assert client.chats.typing.start(chat_id) is None
    assert [c["typing"] for c in control.get("/control/chats") if c["id"] == chat_id] == [True]
    assert client.chats.typing.stop(chat_id) is None
    assert [c["typing"] for c in control.get("/control/chats") if c["id"] == chat_id] == [False]
    assert client.chats.mark_as_read(chat_id) is None
    reaction = client.messages.add_reaction(inbound["message_id"], operation="add", type="love")
    assert isinstance(reaction, MessageAddReactionResponse)
    assert reaction.status == "accepted" and reaction.trace_id

    got = client.messages.retrieve(inbound["message_id"])
    assert isinstance(got, Message)
    assert got.chat_id == chat_id and got.is_from_me is False and got.is_read is True
    assert got.from_handle.handle == ALICE
    assert got.parts[0].value == "is the deploy done?"
    assert got.parts[0].reactions[0].type == "love" and got.parts[0].reactions[0].is_me

    # Listing, one page at a time through the client's auto-pagination.
    listed = list(client.chats.messages.list(chat_id, limit=1))
    assert all(isinstance(m, Message) for m in listed)
    assert {m.id for m in listed} == {created.chat.message.id, inbound["message_id"], sent.message.id}
    chats = list(client.chats.list_chats(from_=BOT))
    assert chat_id in {c.id for c in chats} and all(isinstance(c, Chat) for c in chats)

    # The bot's own messages come back as message.sent / message.delivered echoes.
    def echoes(kind):
        return env["receiver"].of_type(kind, lambda e: e["data"]["id"] == sent.message.id)

    wait_until(lambda: echoes("message.sent") and echoes("message.delivered"), what="echo webhooks")
    ev = typed_event(client, echoes("message.sent")[0], MessageSentWebhookEvent)
    assert ev.event_type == "message.sent"
    assert ev.data.direction == "outbound" and ev.data.sender_handle.is_me is True
    ev = typed_event(client, echoes("message.delivered")[0], MessageDeliveredWebhookEvent)
    assert ev.event_type == "message.delivered"
    assert ev.data.delivered_at is not None
    assert client.messages.retrieve(sent.message.id).delivery_status == "delivered"
    # Sent once, not twice: no second echo for the replayed idempotency key.
    assert len(echoes("message.sent")) == 1

    calls = control.get("/control/calls?path_prefix=/v3/chats/" + chat_id + "/messages")
    assert [c["status"] for c in calls if c["method"] == "POST"] == [202, raw2.status_code]


def test_errors_are_typed(env):
    client, control = env["client"], env["control"]
    with pytest.raises(linq.NotFoundError) as e:
        client.chats.retrieve("00000000-0000-4000-8000-000000000000")
    # The client unpacks Linq's envelope: `body` is its `error` object.
    assert e.value.body["code"] == 2001 and e.value.body["status"] == 404
    envelope = e.value.response.json()
    assert envelope["success"] is False and envelope["trace_id"] and envelope["error"]["doc_url"]

    bad = client.with_options(api_key="wrong")
    with pytest.raises(linq.AuthenticationError) as e:
        bad.chats.list_chats()
    assert e.value.body["code"] == 2004

    created = client.chats.create(from_=BOT, to=[BOB], message={"parts": [{"type": "text", "value": "hi Bob"}]})
    chat_id = created.chat.id
    with pytest.raises(linq.BadRequestError) as e:
        client.chats.messages.send(chat_id, message={"parts": [{"type": "text", "value": "x" * 10001}]})
    assert e.value.body["code"] == 1004
    with pytest.raises(linq.NotFoundError) as e:
        client.chats.messages.send(
            chat_id,
            message={"parts": [{"type": "text", "value": "re"}], "reply_to": {"message_id": created.chat.message.id + "x"}},
        )
    assert e.value.body["code"] == 2002

    group = client.chats.create(from_=BOT, to=[BOB, CAROL], message={"parts": [{"type": "text", "value": "hi all"}]})
    assert group.chat.is_group is True
    with pytest.raises(linq.PermissionDeniedError) as e:
        client.chats.typing.start(group.chat.id)
    assert e.value.body["code"] == 2016

    # Rate limit: 30 messages per minute per chat (the create above was the first).
    for i in range(29):
        client.chats.messages.send(chat_id, message={"parts": [{"type": "text", "value": f"n{i}"}]})
    with pytest.raises(linq.RateLimitError) as e:
        client.chats.messages.send(chat_id, message={"parts": [{"type": "text", "value": "one too many"}]})
    assert e.value.body["code"] == 1007
    assert int(e.value.response.headers["retry-after"]) == e.value.body["retry_after"] > 0

    # An injected 429 with Retry-After is retried by the client (max_retries=2) and then succeeds.
    control.post("/control/faults", {"api": {"status": 429, "count": 1, "retry_after_s": 1, "path_prefix": "/v3/chats/" + group.chat.id}})
    retrying = client.with_options(max_retries=2)
    t0 = time.monotonic()
    ok = retrying.chats.messages.send(group.chat.id, message={"parts": [{"type": "text", "value": "after a 429"}]})
    assert time.monotonic() - t0 >= 0.9
    assert ok.message.parts[0].value == "after a 429"
    statuses = [c["status"] for c in control.get("/control/calls?path_prefix=/v3/chats/" + group.chat.id + "/messages")]
    assert statuses == [429, 202]
    assert control.get("/control/faults")["api"]["count"] == 0
    status, _ = control.call("DELETE", "/control/faults")
    assert status == 200


def test_webhooks_unwrap(env):
    client, control, receiver = env["client"], env["control"], env["receiver"]

    r = control.post("/control/inbound", {"from": CAROL, "text": "what's the weather?"})
    assert r["status"] == 200
    [d] = receiver.by_event(r["event_id"])
    assert d["path"] == "/api/linq/inbound"
    ev = typed_event(client, d, MessageReceivedWebhookEvent)
    assert ev.event_type == "message.received"
    assert ev.event_id == r["event_id"] and ev.webhook_version == "2026-02-03" and ev.api_version == "v3"
    assert ev.data.id == r["message_id"] and ev.data.chat.id == r["chat_id"]
    assert ev.data.direction == "inbound"
    assert ev.data.parts[0].value == "what's the weather?"
    assert ev.data.chat.owner_handle.handle == BOT and ev.data.chat.owner_handle.is_me
    assert ev.data.sender_handle.handle == CAROL and not ev.data.sender_handle.is_me

    # A tampered body is rejected by the client's verification.
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        client.webhooks.unwrap(d["body"].decode().replace("weather", "wether"), headers=d["headers"])
    # The legacy signature is there too.
    h = d["headers"]
    legacy = hmac.new(env["secret"].encode(), h["x-webhook-timestamp"].encode() + b"." + d["body"], hashlib.sha256)
    assert h["x-webhook-signature"] == legacy.hexdigest()
    assert h["x-webhook-event"] == "message.received" and h["x-webhook-subscription-id"]

    # Group with an @mention of the bot.
    g = control.post(
        "/control/inbound",
        {"from": ALICE, "text": "@Cortex summarize this", "group": True, "participants": [BOB], "mentions_me": True},
    )
    [d] = receiver.by_event(g["event_id"])
    ev = typed_event(client, d, MessageReceivedWebhookEvent)
    assert ev.data.chat.is_group is True
    assert ev.data.parts[0].mentions[0].is_me is True and ev.data.parts[0].mentions[0].range == [0, 7]
    chat = client.chats.retrieve(g["chat_id"])
    assert {h.handle for h in chat.handles} == {BOT, ALICE, BOB}

    # An injected event, then a redelivery of it: same id and body, fresh signature.
    rx = control.post(
        "/control/event",
        {
            "event_type": "reaction.added",
            "data": {
                "chat_id": r["chat_id"], "message_id": r["message_id"], "part_index": 0,
                "reaction_type": "like", "custom_emoji": None, "is_from_me": False, "from": CAROL,
                "reacted_at": "2026-11-22T14:11:42.284864386Z", "service": "iMessage",
            },
        },
    )
    assert rx["status"] == 200 and rx["chat_id"] == r["chat_id"]
    again = control.post("/control/redeliver", {"event_id": rx["event_id"]})
    assert again["status"] == 200
    first, second = receiver.by_event(rx["event_id"])
    assert first["body"] == second["body"]
    for d in (first, second):
        ev = typed_event(client, d, ReactionAddedWebhookEvent)
        assert ev.event_type == "reaction.added" and ev.data.reaction_type == "like"

    # Retries: the receiver fails twice, the sim keeps trying with backoff until a 2xx.
    with receiver.lock:
        receiver.fail["are you there?"] = [503, 500]
    r = control.post("/control/inbound", {"from": CAROL, "text": "are you there?"})
    assert r["status"] == 503
    wait_until(lambda: len(receiver.by_event(r["event_id"])) == 3, what="retries")
    [dl] = wait_until(
        lambda: [x for x in control.get("/control/deliveries?event_id=" + r["event_id"]) if x["state"] == "delivered"],
        what="delivered state",
    )
    assert [a["status"] for a in dl["attempts"]] == [503, 500, 200]
    for d in receiver.by_event(r["event_id"]):
        assert typed_event(client, d, MessageReceivedWebhookEvent).data.parts[0].value == "are you there?"

    # A 4xx other than 429 is not retried.
    with receiver.lock:
        receiver.fail["bad request"] = [400]
    r = control.post("/control/inbound", {"from": CAROL, "text": "bad request"})
    assert r["status"] == 400
    time.sleep(0.3)
    assert len(receiver.by_event(r["event_id"])) == 1

    # Duplicate deliveries fault: each event arrives twice with the same webhook-id.
    control.post("/control/faults", {"duplicate_deliveries": True})
    r = control.post("/control/inbound", {"from": CAROL, "text": "twice"})
    wait_until(lambda: len(receiver.by_event(r["event_id"])) == 2, what="duplicate delivery")
    control.call("DELETE", "/control/faults")

    # echo_outbound off: no message.sent for the bot's messages.
    control.post("/control/config", {"echo_outbound": False})
    sent = client.chats.messages.send(r["chat_id"], message={"parts": [{"type": "text", "value": "quiet"}]})
    time.sleep(0.3)
    assert not receiver.of_type("message.sent", lambda e: e["data"]["id"] == sent.message.id)
    control.post("/control/config", {"echo_outbound": True})

    texts = [m["text"] for m in control.get("/control/messages?chat_id=" + r["chat_id"])]
    assert texts[-2:] == ["twice", "quiet"]
    assert control.get("/control/messages?chat_id=" + r["chat_id"])[-1]["direction"] == "outbound"


def test_inbound_media_with_an_expiring_url(env):
    """A person's photo: a media part the client parses, whose URL serves the bytes until it
    expires (no partner token: the URL is the capability), then answers 403."""
    client, control, receiver = env["client"], env["control"], env["receiver"]
    data = b"\x89PNG\r\n\x1a\n-not-really-a-png-" * 3
    r = control.post(
        "/control/inbound",
        {"from": CAROL, "text": "look", "media": [
            {"filename": "cat.png", "mime_type": "image/png",
             "content_b64": base64.b64encode(data).decode(), "ttl_s": 2}]},
    )
    [d] = receiver.by_event(r["event_id"])
    ev = typed_event(client, d, MessageReceivedWebhookEvent)
    text, media = ev.data.parts
    assert text.value == "look"
    assert media.type == "media" and media.filename == "cat.png"
    assert media.mime_type == "image/png" and media.size_bytes == len(data)
    import urllib.error
    import urllib.request
    with urllib.request.urlopen(media.url, timeout=10) as resp:
        assert resp.read() == data
    time.sleep(3.1)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(media.url, timeout=10)
    assert e.value.code == 403


def test_attachment_upload_flow(env):
    """POST /v3/attachments, PUT the bytes to the presigned URL with the required headers, then a
    media part by attachment_id: all through the official client's types."""
    from linq.types import AttachmentCreateResponse, AttachmentRetrieveResponse
    import urllib.error
    import urllib.request

    client, control = env["client"], env["control"]
    created = client.chats.create(
        from_=BOT, to=["+15550005000"], message={"parts": [{"type": "text", "value": "files coming"}]}
    )
    chat_id = created.chat.id
    data = b"%PDF-1.4 report body\n" * 10
    att = client.attachments.create(filename="report.pdf", content_type="application/pdf", size_bytes=len(data))
    assert isinstance(att, AttachmentCreateResponse)
    assert att.http_method == "PUT" and att.required_headers == {"Content-Type": "application/pdf"}

    # Not uploaded yet: sending it is refused, and retrieve says pending.
    assert client.attachments.retrieve(att.attachment_id).status == "pending"
    with pytest.raises(linq.APIStatusError) as e:
        client.chats.messages.send(chat_id, message={"parts": [{"type": "media", "attachment_id": att.attachment_id}]})
    assert e.value.status_code == 409

    # A wrong Content-Type or length is refused as S3 would.
    bad = urllib.request.Request(att.upload_url, data=data, method="PUT", headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad, timeout=10)
    assert e.value.code == 403
    put = urllib.request.Request(att.upload_url, data=data, method="PUT", headers=att.required_headers)
    with urllib.request.urlopen(put, timeout=10) as resp:
        assert resp.status == 200
    got = client.attachments.retrieve(att.attachment_id)
    assert isinstance(got, AttachmentRetrieveResponse)
    assert got.status == "complete" and got.size_bytes == len(data) and got.filename == "report.pdf"

    sent = client.chats.messages.send(
        chat_id, message={"parts": [{"type": "media", "attachment_id": att.attachment_id}]}
    )
    [part] = sent.message.parts
    assert part.type == "media" and part.filename == "report.pdf" and part.mime_type == "application/pdf"
    with urllib.request.urlopen(part.url, timeout=10) as resp:
        assert resp.read() == data

    # Types Linq rejects, and unknown attachments.
    with pytest.raises(linq.BadRequestError):
        client.attachments.create(filename="a.flac", content_type="audio/flac", size_bytes=10)
    with pytest.raises(linq.NotFoundError):
        client.attachments.retrieve("00000000-0000-4000-8000-000000000000")
