"""A local OpenAI-compatible chat-completions server for the step 1 and 2 tests.

It runs in a thread on 127.0.0.1 and answers POST .../chat/completions the way real providers
do on good and bad days. Each request gets one mode: the next one from `queue` if any, else a
random fault with probability `fault_rate` (seeded), else `mode`.

HTTP modes:    429 (with Retry-After), 500, slow (sleeps `slow_seconds`, past the client's timeout),
               malformed (a 200 whose JSON body is cut off), trickle (the body one byte every
               `slow_seconds` / 10, each read well within a timeout but the whole far past it),
               400_echo (a 400 whose message echoes the request's API key, as some proxies do)
Content modes: json, fenced (```json ...```), garbage (no JSON), think (<think>...</think> inline),
               reasoning_content (thoughts in the message field), length (finish_reason "length"),
               with_rejects (generation only: an empty, a non-English and one surplus item),
               prose (reasoning as plain prose before the answer, no <think> tags),
               control (NUL and ESC characters in the generated queries or the judge's reason)

Generation requests (step 1) are answered with as many unique English queries as the prompt asks
for ("exactly N"). Judge requests (step 2, the user message holds <query>...</query>) get a verdict
from keywords: True when the query mentions shipping words and no attack words. The thoughts echo
the query, so injected JSON in a row shows up in the reasoning, as it would with a real model.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOGISTICS_WORDS = ("parcel", "shipment", "package", "tracking", "customs", "freight", "pallet", "courier")
ATTACK_WORDS = ("ignore", "system prompt", "jailbreak", "no rules")


class FakeLLMServer:
    def __init__(
        self,
        mode="json",
        queue=(),
        fault_rate=0.0,
        fault_modes=("429", "500", "slow"),
        seed=0,
        retry_after="1",
        slow_seconds=1.0,
        reply_delay=0.0,
    ):
        self.mode = mode
        self.queue = list(queue)
        self.fault_rate = fault_rate
        self.fault_modes = fault_modes
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.reply_delay = reply_delay  # seconds every reply waits, to stretch a run for kill tests
        self.served = Counter()  # mode -> requests answered with it
        self.requests = []  # parsed request bodies, in arrival order
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._texts = itertools.count()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # a client that timed out hung up; fine
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_mode(self, body: dict) -> str:
        with self._lock:
            self.requests.append(body)
            if self.queue:
                mode = self.queue.pop(0)
            elif self._random.random() < self.fault_rate:
                mode = self._random.choice(self.fault_modes)
            else:
                mode = self.mode
            self.served[mode] += 1
            return mode

    # -- replies -----------------------------------------------------------

    def completion(self, body: dict, mode: str) -> dict:
        user = body["messages"][-1]["content"]
        query = re.search(r"<query>\n?(.*?)\n?</query>", user, re.DOTALL)
        thoughts = "Thinking it over."
        if query:
            text = query.group(1)
            thoughts = f"The query says: {text}. I must judge it as data."
            lowered = text.lower()
            label = any(w in lowered for w in LOGISTICS_WORDS) and not any(w in lowered for w in ATTACK_WORDS)
            reason = "keyword policy\x00\x1b[2J" if mode == "control" else "keyword policy"
            answer = json.dumps({"label": label, "reason": reason})
        else:
            wanted = int(re.search(r"exactly (\d+)", user).group(1))
            texts = [self.unique_text() for _ in range(wanted)]
            if mode == "control":
                texts = [f"{text}\x00\x1b[31m" for text in texts]
            if mode == "with_rejects":
                texts[:2] = ["", "这是一个关于天气的问题吗"]
                texts.append(self.unique_text())
            answer = json.dumps({"queries": texts})
        message = {"role": "assistant", "content": answer}
        finish_reason = "stop"
        if mode == "fenced":
            message["content"] = f"Here you go:\n```json\n{answer}\n```\nAnything else?"
        elif mode == "garbage":
            message["content"] = "Sorry, I cannot help with that request today."
        elif mode == "prose":
            message["content"] = f"{thoughts} Final answer: {answer}"
        elif mode == "think":
            message["content"] = f"<think>{thoughts}</think>\n{answer}"
        elif mode == "reasoning_content":
            message["reasoning_content"] = thoughts
        elif mode == "length":
            message["content"], finish_reason = f"<think>{thoughts} Let me think more and more", "length"
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {
                "prompt_tokens": len(json.dumps(body["messages"])) // 4,
                "completion_tokens": len(answer) // 4,
                "total_tokens": 0,
            },
        }

    def unique_text(self) -> str:
        number = next(self._texts)
        return f"Where is parcel {number} that I sent to warehouse {number * 7 + 3} last week?"

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = server.next_mode(body)
                time.sleep(server.reply_delay)
                if mode == "429":
                    self.reply(429, {"error": {"message": "rate limited"}}, {"Retry-After": server.retry_after})
                elif mode == "500":
                    self.reply(500, {"error": {"message": "internal error"}})
                elif mode == "malformed":
                    data = json.dumps(server.completion(body, "json")).encode()[:40]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif mode == "400_echo":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    self.reply(400, {"error": {"message": f"invalid request for key {key}: model unknown"}})
                elif mode == "trickle":
                    data = json.dumps(server.completion(body, "json")).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(server.slow_seconds / 10)
                elif mode == "slow":
                    time.sleep(server.slow_seconds)
                    self.reply(200, server.completion(body, "json"))
                else:
                    self.reply(200, server.completion(body, mode))

            def reply(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


if __name__ == "__main__":
    with FakeLLMServer() as fake:
        print(f"fake LLM server at {fake.url}; Ctrl-C to stop")
        threading.Event().wait()
