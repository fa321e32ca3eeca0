"""LLM calls shared by steps 1 and 2: provider settings and client, a resumable JSONL journal,
JSON extraction from model replies, and a concurrent runner that counts the openai client's own retries.

It sits beside the two scripts that use it; `uv run data_process/1_dataset_generation.py` puts this
folder first on the import path, so `import llm_client` needs no path edits.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import ENV_FILE_HELP, UserError, load_env_file

FIREWORKS_BASE_URL = "https://api.fireworks.ai/inference/v1"
# Provider errors that no retry can fix: bad request, bad key, no access, unknown model.
FATAL_STATUS_HELP = {
    400: "the provider rejected the request (400: {detail}); check the model name, "
    "and pass --no-json-mode if it lacks JSON mode.",
    401: "the provider rejected the API key (401); check api_key in .env or --api-key.",
    403: "the API key has no access to this model (403); check the model name and your account.",
    404: "the provider does not know this model or URL (404: {detail}); check --base-url and the model name.",
}


@dataclass
class ProviderConfig:
    """Where the LLM lives and how hard to try; shared by steps 1 and 2."""

    api_key: str | None = field(
        default=None,
        metadata={"help": "API key. Default: `api_key` from the env file (keeps keys out of shell history)."},
    )
    base_url: str | None = field(
        default=None,
        metadata={
            "help": f"OpenAI-compatible base URL. Default: `base_url` from the env file, else {FIREWORKS_BASE_URL}."
        },
    )
    env_file: str = field(default=".env", metadata={"help": ENV_FILE_HELP})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    max_retries: int = field(
        default=5,
        metadata={
            "help": "Retries per request on 408/409/429/5xx, timeouts and connection errors, done by the openai "
            "client: exponential backoff from 0.5 s to 8 s, each wait cut by a random 0-25 percent (jitter), "
            "or the server's Retry-After."
        },
    )
    request_timeout: float = field(
        default=120.0, metadata={"help": "Seconds one HTTP attempt may take before it is retried."}
    )
    parse_retries: int = field(default=1, metadata={"help": "Times to re-ask when a reply holds no usable JSON."})


class RequestMonitor:
    """Watches every HTTP attempt of the openai client through httpx event hooks.

    It counts attempts, retries and error statuses: the client stamps each attempt with the header
    `x-stainless-retry-count` (0 for the first), so a retry is an attempt whose count is above 0,
    whatever caused it (429, 5xx, timeout). It also turns a 200 whose body is not a chat completion
    (cut-off JSON, a proxy's HTML page, no choices) into a 502, so the client retries it like any
    bad gateway instead of the run crashing on it.
    """

    def __init__(self):
        import threading
        from collections import Counter

        self._lock = threading.Lock()
        self.attempts = 0
        self.retries = 0
        self.statuses = Counter()

    def on_request(self, request) -> None:
        with self._lock:
            self.attempts += 1
            self.retries += int(request.headers.get("x-stainless-retry-count", "0")) > 0

    def on_response(self, response) -> None:
        status = str(response.status_code)
        if response.status_code == 200 and not is_chat_completion(response.read()):
            response.status_code, status = 502, "200_malformed"
        if response.status_code >= 400:
            with self._lock:
                self.statuses[status] += 1

    def as_dict(self) -> dict:
        return {"http_attempts": self.attempts, "retries": self.retries, "http_error_statuses": dict(self.statuses)}


def is_chat_completion(body: bytes) -> bool:
    try:
        data = json.loads(body)
        return isinstance(data["choices"][0]["message"], dict)
    except (ValueError, TypeError, KeyError, IndexError):
        return False


def get_setting(config: ProviderConfig, flag_value, name: str, default: str | None = None) -> str | None:
    """A flag's value, else the variable `name` from the environment or the env file, else the default."""
    load_env_file(config.env_file)
    return flag_value or os.environ.get(name) or default


def get_llm_client(config: ProviderConfig):
    """An openai.OpenAI client for the configured provider, plus its RequestMonitor. The key is never printed."""
    import openai

    api_key = get_setting(config, config.api_key, "api_key")
    if not api_key:
        raise UserError(
            "no API key: copy .env.example to .env and set api_key "
            "(any value, e.g. api_key=local, for vLLM or Ollama), "
            "or pass --api-key."
        )
    monitor = RequestMonitor()
    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [monitor.on_request], "response": [monitor.on_response]}
    )
    client = openai.OpenAI(
        api_key=api_key,
        base_url=get_setting(config, config.base_url, "base_url", FIREWORKS_BASE_URL),
        max_retries=config.max_retries,
        timeout=config.request_timeout,
        http_client=http_client,
    )
    return client, monitor


def complete_chat(
    client, model: str, messages: list[dict], max_tokens: int, temperature: float, json_mode: bool
) -> dict:
    """One chat completion, reduced to what the steps use: answer, reasoning, finish_reason, usage."""
    extra = {"response_format": {"type": "json_object"}} if json_mode else {}
    response = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, **extra
    )
    choice = response.choices[0]
    reasoning, answer = split_reasoning(choice.message)
    usage = response.usage
    return {
        "answer": answer,
        "reasoning": reasoning,
        "finish_reason": choice.finish_reason,
        "usage": {
            "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        },
    }


THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
FENCED_BLOCK = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def split_reasoning(message) -> tuple[str, str]:
    """(reasoning, answer) of a chat message.

    Providers return a reasoning model's thoughts in `reasoning_content` (DeepSeek, vLLM, Fireworks),
    in `reasoning` (Ollama, OpenRouter) or inline as <think>...</think> in the content; a reply cut
    off while thinking has an unclosed <think>, and some chat templates drop the opening tag.
    The answer is what is left once the thoughts are removed, so JSON quoted in them is never read.
    """
    content = message.content or ""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
    if "</think>" in content.lower() and "<think>" not in content.lower():
        cut = content.lower().rindex("</think>")
        reasoning, content = reasoning + content[:cut], content[cut + len("</think>") :]
    reasoning += "".join(THINK_BLOCK.findall(content))
    return reasoning, THINK_BLOCK.sub("", content).strip()


def extract_json(text: str):
    """The first JSON object or array in a reply: bare, inside ``` fences, or amid prose; None if there is none."""
    text = text.strip()
    candidates = [text, *FENCED_BLOCK.findall(text)]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, match.start())[0]
        except json.JSONDecodeError:
            continue
    return None


class Journal:
    """Append-only JSONL record of finished requests, so a stopped or killed run resumes where it left off.

    The first line names the plan (a hash of it); a journal from another plan is refused. Each finished
    request is written as its rows and then one `done` line, all tagged with a fresh batch id, in a single
    write followed by flush + fsync. A request counts as finished only when its `done` line and all its
    rows are on disk, so a batch torn by kill -9 is redone rather than half kept, and a truncated last
    line is cut off before the next append.
    """

    def __init__(self, path: str | Path, plan) -> None:
        import hashlib

        self.path = Path(path)
        self.fingerprint = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self._file = None

    def load(self) -> dict[int, dict]:
        """{request_id: {"done": done line, "rows": [row lines]}} for every finished request."""
        if not self.path.is_file():
            return {}
        rows_by_batch: dict[str, list] = {}
        finished: dict[int, dict] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill; its batch has no `done` line and is redone
            if not isinstance(record, dict):
                continue
            if number == 0 and record.get("kind") == "header" and record.get("fingerprint") != self.fingerprint:
                raise UserError(
                    f"{self.path} belongs to a run with other settings (plan, input or models); rerun with the same "
                    f"flags to resume it, or pass --journal with a new path to start afresh."
                )
            if record.get("kind") == "row":
                rows_by_batch.setdefault(record["batch"], []).append(record)
            elif record.get("kind") == "done" and record["request_id"] not in finished:
                rows = rows_by_batch.get(record["batch"], [])
                if len(rows) == record["rows"]:
                    finished[record["request_id"]] = {"done": record, "rows": rows}
        return finished

    def append(self, request_id: int, rows: list[dict], **summary) -> None:
        """Write one finished request durably: rows, then its `done` line, then fsync."""
        import uuid

        if self._file is None:
            self._open()
        batch = uuid.uuid4().hex[:12]
        lines = [{"kind": "row", "request_id": request_id, "batch": batch, **row} for row in rows]
        lines.append({"kind": "done", "request_id": request_id, "batch": batch, "rows": len(rows), **summary})
        self._file.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab+") as raw:  # cut a torn last line so the next append starts on a fresh line
            size = raw.seek(0, os.SEEK_END)
            raw.seek(0)
            data = raw.read()
            end = data.rfind(b"\n") + 1
            if end != size:
                raw.truncate(end)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across appends; close() closes it
        if end == 0:
            self._file.write(json.dumps({"kind": "header", "fingerprint": self.fingerprint}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def api_error_reason(error: Exception) -> str:
    """A short name for a failed call: timeout, connection, http_<status>, or the exception's name."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, openai.APIStatusError):
        return f"http_{error.status_code}"
    return type(error).__name__


def run_requests(requests: list[dict], send, on_done, concurrency: int, monitor: RequestMonitor, desc: str) -> dict:
    """Run send(request) for every request on `concurrency` threads, with a progress bar.

    on_done(request, result) runs in this thread as results arrive, so the journal has one writer.
    A request that still fails after the client's retries is counted by reason and left for the
    next run; an error no retry can fix (bad key, unknown model) before any success stops the run
    with one sentence.
    The workers are daemon threads, so Ctrl-C ends the run at once: their unfinished requests
    were never journalled and are simply redone next time. Returns {reason: count} of failures.
    """
    import queue
    import threading
    from collections import Counter

    import openai
    from tqdm.auto import tqdm

    todo, done, stop = iter(requests), queue.Queue(), threading.Event()
    take = threading.Lock()

    def work() -> None:
        while not stop.is_set():
            with take:
                request = next(todo, None)
            if request is None:
                return
            try:
                done.put((request, send(request), None))
            except Exception as error:  # noqa: BLE001 - handed to the main thread, which decides
                done.put((request, None, error))

    for _ in range(min(max(1, concurrency), len(requests))):
        threading.Thread(target=work, daemon=True).start()
    failed, succeeded = Counter(), 0
    try:
        with tqdm(total=len(requests), desc=desc, unit="req") as progress:
            for _ in range(len(requests)):
                request, result, error = done.get()
                fatal = isinstance(error, openai.APIStatusError) and error.status_code in FATAL_STATUS_HELP
                if fatal and succeeded == 0:  # a bad key or model fails every request: say so at once
                    raise UserError(FATAL_STATUS_HELP[error.status_code].format(detail=str(error.message)[:200]))
                if isinstance(error, openai.OpenAIError):
                    failed[api_error_reason(error)] += 1
                elif error is not None:
                    raise error
                else:
                    on_done(request, result)
                    succeeded += 1
                progress.update()
                progress.set_postfix(retries=monitor.retries, failed=sum(failed.values()))
    finally:
        stop.set()
    return dict(failed)


def sum_usage(done_records) -> dict:
    """Total prompt and completion tokens over journal `done` lines."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0}
    for record in done_records:
        for key in totals:
            totals[key] += record.get("usage", {}).get(key, 0)
    return totals


def estimate_cost(usage: dict, price_input: float, price_output: float) -> float:
    """US dollars for the given tokens at prices per million tokens (an estimate: list prices change)."""
    return usage["prompt_tokens"] / 1e6 * price_input + usage["completion_tokens"] / 1e6 * price_output


def config_dict(config) -> dict:
    """The resolved config as a dict, for logs and results files; an API key is masked."""
    values = asdict(config)
    if values.get("api_key"):
        values["api_key"] = "***"
    return values
