#!/usr/bin/python3
"""A stand-in for Anthropic's Messages API, for running the real `claude` CLI in tests.

Serves `POST /v1/messages` (streaming SSE and non-streaming, shaped as the real API), and
records every request it gets. What it answers is scripted per test by a JSON file (re-read on
every request, so a test can change it between turns):

    [{"match": "read the db",                      # substring of the turn's prompt ("" = any)
      "steps": [                                   # step k answers the k-th model call of a turn
        {"tool_use": {"name": "Bash", "input": {"command": "cat /etc/hostname"}}},
        {"text": "done: {last_tool_result}"}]},    # placeholders: see render()
     {"match": "overload", "steps": [{"error": 529, "times": 99}]},
     {"match": "cut", "steps": [{"cut_after": "Partial ans"}]}]

A step is answered for the k-th call of a turn, k = the number of assistant messages after the
turn's prompt (each tool round adds one). Steps: `text`, `tool_use` (a list of tool calls is
allowed: `tool_uses`), `error` (HTTP status; `retry_after` seconds; `times`: answer the error
this many times in a row for the same call, then fall through to the next key of the step, or to
the default answer), `cut_after` (stream this much text, then drop the connection mid-stream;
`times` as for errors),
`sleep_ms` (wait before answering). Placeholders in texts and tool inputs: {prompt}, {turn},
{last_tool_result}, {inbox_path} (the first `inbox/<name>` the prompt mentions). Unscripted
calls get the default answer:

    standin-api: turn N; you said "<prompt>"

where N counts the prompts in the conversation the CLI sent (so a resumed session shows N > 1).

Every request is appended to <state>/requests.jsonl as one JSON object: time, method, path,
headers (lower-cased), body (parsed JSON when it is JSON), the status answered and the time
spent answering (`spent_ms`, including scripted sleeps and error answers).

Run:  anthropic_standin.py --listen 198.51.100.1:443 --state /run/anthropic-standin
      (plain HTTP; the CLI is pointed at it with ANTHROPIC_BASE_URL=http://198.51.100.1:443)
"""

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_DEFAULT = "claude-sonnet-4-5-20250929"
LOCK = threading.Lock()
# (rule index, step index, conversation key) -> errors answered so far for that call.
ERRORS_SENT = {}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    401: "invalid x-api-key",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


def text_of(content):
    """The plain text of a message's content (string or blocks), tool results excluded."""
    if isinstance(content, str):
        return content
    out = []
    for b in content or []:
        if isinstance(b, dict) and b.get("type") == "text":
            out.append(b.get("text", ""))
    return "\n".join(out)


def has_tool_result(content):
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def strip_reminders(t):
    return re.sub(r"<system-reminder>.*?</system-reminder>", "", t, flags=re.S).strip()


def analyse(body):
    """(prompt of this turn, calls already made in this turn, prompts in the conversation,
    text of the last tool result)."""
    msgs = body.get("messages") or []
    prompt_at, prompts = None, 0
    for i, m in enumerate(msgs):
        if m.get("role") == "user" and not has_tool_result(m.get("content")):
            if strip_reminders(text_of(m.get("content"))):
                prompt_at = i
                prompts += 1
    prompt = strip_reminders(text_of(msgs[prompt_at]["content"])) if prompt_at is not None else ""
    calls = 0
    last_result = ""
    if prompt_at is not None:
        for m in msgs[prompt_at + 1:]:
            if m.get("role") == "assistant":
                calls += 1
            for b in m.get("content") if isinstance(m.get("content"), list) else []:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    c = b.get("content")
                    last_result = c if isinstance(c, str) else text_of(c)
                    if b.get("is_error"):
                        last_result = "[is_error] " + last_result
    return prompt, calls, prompts, last_result


def load_script(state):
    try:
        with open(os.path.join(state, "script.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return []


def render(s, ctx):
    m = re.search(r"inbox/[A-Za-z0-9._-]+", ctx["prompt"])
    return (s.replace("{inbox_path}", m.group(0) if m else "inbox/none")
             .replace("{prompt}", ctx["prompt"])
             .replace("{last_tool_result}", ctx["last_tool_result"])
             .replace("{turn}", str(ctx["prompts"])))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "anthropic-standin"

    def log_message(self, fmt, *args):
        sys.stderr.write("anthropic-standin: " + (fmt % args) + "\n")

    def record(self, body, status, t0, extra=None):
        rec = {
            "time": t0,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "status": status,
            "spent_ms": round((time.time() - t0) * 1000, 3),
        }
        if extra:
            rec.update(extra)
        with LOCK:
            with open(os.path.join(self.server.state, "requests.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")

    def read_body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def send_json(self, status, obj, headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_standin_" + uuid.uuid4().hex[:16])
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        t0 = time.time()
        self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not here"}})
        self.record(None, 404, t0)

    def do_HEAD(self):
        t0 = time.time()
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        self.record(None, 200, t0)

    def do_POST(self):
        t0 = time.time()
        body = self.read_body()
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            self.send_json(200, {"input_tokens": 100})
            return self.record(body, 200, t0)
        if path != "/v1/messages" or not isinstance(body, dict):
            self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not here"}})
            return self.record(body, 404, t0)
        prompt, calls, prompts, last = analyse(body)
        ctx = {"prompt": prompt, "last_tool_result": last, "prompts": prompts}
        step, rule_i = None, None
        for i, rule in enumerate(load_script(self.server.state)):
            if rule.get("match", "") in prompt:
                steps = rule.get("steps") or []
                if calls < len(steps):
                    step, rule_i = steps[calls], i
                break
        step = step or {}
        if step.get("sleep_ms"):
            time.sleep(step["sleep_ms"] / 1000)
        if "error" in step:
            key = (rule_i, calls, prompt, prompts)
            with LOCK:
                sent = ERRORS_SENT.get(key, 0)
                if sent < step.get("times", 1):
                    ERRORS_SENT[key] = sent + 1
                    status = int(step["error"])
                else:
                    status = None
            if status:
                hdrs = []
                if "retry_after" in step:
                    hdrs.append(("retry-after", str(step["retry_after"])))
                if status == 429:
                    hdrs.append(("anthropic-ratelimit-requests-remaining", "0"))
                self.send_json(status, {"type": "error", "error": {
                    "type": ERROR_TYPES.get(status, "api_error"),
                    "message": ERROR_MESSAGES.get(status, "error")}}, hdrs)
                return self.record(body, status, t0, {"scripted": "error"})
        blocks = []
        if "tool_use" in step or "tool_uses" in step:
            for tu in step.get("tool_uses") or [step["tool_use"]]:
                inp = json.loads(render(json.dumps(tu.get("input", {})), ctx))
                blocks.append({"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24],
                               "name": tu["name"], "input": inp})
            stop = "tool_use"
        else:
            text = render(step["text"], ctx) if "text" in step else \
                'standin-api: turn %d; you said "%s"' % (prompts, prompt)
            blocks.append({"type": "text", "text": text})
            stop = "end_turn"
        model = body.get("model") or MODEL_DEFAULT
        msg = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
               "model": model, "content": blocks, "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": 100, "output_tokens": 20,
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        cut = step.get("cut_after")
        if cut is not None:
            key = (rule_i, calls, prompt, prompts, "cut")
            with LOCK:
                sent = ERRORS_SENT.get(key, 0)
                ERRORS_SENT[key] = sent + 1
            if sent >= step.get("times", 1):
                cut = None
        if not body.get("stream"):
            if cut is None:
                self.send_json(200, msg)
                return self.record(body, 200, t0)
            # The CLI falls back to a non-streaming request when a stream breaks: cut that too.
            data = json.dumps(msg).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.drop()
            return self.record(body, 200, t0, {"scripted": "cut"})
        self.stream(msg, cut)
        self.record(body, 200, t0, {"scripted": "cut"} if cut is not None else None)

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stream(self, msg, cut):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", "req_standin_" + uuid.uuid4().hex[:16])
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def event(name, data):
            chunk = ("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()

        start = dict(msg, content=[], stop_reason=None,
                     usage=dict(msg["usage"], output_tokens=1))
        event("message_start", {"type": "message_start", "message": start})
        event("ping", {"type": "ping"})
        for i, b in enumerate(msg["content"]):
            if b["type"] == "text":
                event("content_block_start", {"type": "content_block_start", "index": i,
                                              "content_block": {"type": "text", "text": ""}})
                if cut is not None:
                    event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                  "delta": {"type": "text_delta", "text": cut}})
                    # Mid-stream: the connection drops with the chunked body unterminated.
                    self.drop()
                    return
                t = b["text"]
                for j in range(0, len(t), 40):
                    event("content_block_delta", {"type": "content_block_delta", "index": i,
                                                  "delta": {"type": "text_delta", "text": t[j:j + 40]}})
            else:
                event("content_block_start", {"type": "content_block_start", "index": i,
                                              "content_block": {"type": "tool_use", "id": b["id"],
                                                                "name": b["name"], "input": {}}})
                event("content_block_delta", {"type": "content_block_delta", "index": i,
                                              "delta": {"type": "input_json_delta",
                                                        "partial_json": json.dumps(b["input"])}})
            event("content_block_stop", {"type": "content_block_stop", "index": i})
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                "usage": {"output_tokens": msg["usage"]["output_tokens"]}})
        event("message_stop", {"type": "message_stop"})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    ap = argparse.ArgumentParser(description="Anthropic Messages API stand-in (tests only)")
    ap.add_argument("--listen", required=True, help="ADDRESS:PORT")
    ap.add_argument("--state", required=True, help="directory for script.json and requests.jsonl")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    os.makedirs(a.state, exist_ok=True)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.state = a.state
    open(os.path.join(a.state, "ready"), "w").close()
    srv.serve_forever()


if __name__ == "__main__":
    main()
