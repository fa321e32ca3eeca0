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

import httpx2  # the HTTP library of openai 3.x

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
        default=120.0,
        metadata={
            "help": "Seconds an HTTP attempt may take before it is abandoned and retried. Each read is bounded "
            "by it, and so is the whole reply body from the moment the request was sent; a read that stalls "
            "past the deadline is cut by its own read timeout, so an attempt ends within about twice this."
        },
    )
    parse_retries: int = field(default=1, metadata={"help": "Times to re-ask when a reply holds no usable JSON."})


class RequestMonitor:
    """Watches every HTTP attempt of the openai client through httpx event hooks.

    It counts attempts, retries and error statuses: the client stamps each attempt with the header
    `x-stainless-retry-count` (0 for the first), so a retry is an attempt whose count is above 0,
    whatever caused it (429, 5xx, timeout). It also turns a 200 whose body is not a chat completion
    (cut-off JSON, a proxy's HTML page, no choices) into a 502, so the client retries it like any
    bad gateway instead of the run crashing on it.

    The HTTP timeout bounds each read, so a server that trickles a byte a second would hold an attempt
    forever; the body is read against a deadline of `timeout` seconds from the request instead.
    `secret` (the API key) is cut out of anything the monitor is asked to redact.
    """

    def __init__(self, timeout: float, secret: str = ""):
        import threading
        from collections import Counter

        self._lock = threading.Lock()
        self.timeout, self.secret = timeout, secret
        self.attempts = 0
        self.retries = 0
        self.statuses = Counter()

    def on_request(self, request) -> None:
        import time

        request.extensions["attempt_deadline"] = time.monotonic() + self.timeout
        with self._lock:
            self.attempts += 1
            self.retries += int(request.headers.get("x-stainless-retry-count", "0")) > 0

    def on_response(self, response) -> None:
        deadline = response.request.extensions.get("attempt_deadline")
        if deadline is not None:
            response.stream = DeadlineStream(response.stream, deadline, response.request)
        status = str(response.status_code)
        if response.status_code == 200 and not is_chat_completion(response.read()):
            response.status_code, status = 502, "200_malformed"
        if response.status_code >= 400:
            with self._lock:
                self.statuses[status] += 1

    def as_dict(self) -> dict:
        return {"http_attempts": self.attempts, "retries": self.retries, "http_error_statuses": dict(self.statuses)}

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


class DeadlineStream(httpx2.SyncByteStream):
    """A response body that raises httpx2.ReadTimeout once the attempt's deadline has passed, which the
    openai client retries like any timeout."""

    def __init__(self, stream, deadline: float, request):
        self.stream, self.deadline, self.request = stream, deadline, request

    def __iter__(self):
        import time

        for chunk in self.stream:
            if time.monotonic() > self.deadline:
                raise httpx2.ReadTimeout("the reply took longer than --request-timeout", request=self.request)
            yield chunk

    def close(self) -> None:
        self.stream.close()


def is_chat_completion(body: bytes) -> bool:
    try:
        data = json.loads(body)
        return isinstance(data["choices"][0]["message"], dict)
    except (ValueError, TypeError, KeyError, IndexError):
        return False


# ---- The tables steps 1 and 2 write.

# Characters an .xlsx cell cannot hold (openpyxl refuses them): C0 controls other than tab and line breaks.
XLSX_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def write_table(frame, path: str | Path) -> int:
    """Write .xlsx or .csv; return how many control characters were escaped.

    In .xlsx, a control character that the format cannot hold (a NUL or ESC an LLM wrote) is written as
    its visible escape, \\x00 or \\x1b, so the file is always written; text that starts with '=' stays
    text instead of becoming a formula.
    """
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
        return 0
    escaped = 0

    def escape(value):
        nonlocal escaped
        if not isinstance(value, str):
            return value
        escaped += len(XLSX_ILLEGAL.findall(value))
        return XLSX_ILLEGAL.sub(lambda match: f"\\x{ord(match.group()):02x}", value)

    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        frame.map(escape).to_excel(writer, index=False)
        for row in writer.sheets["Sheet1"].iter_rows():
            for cell in row:
                if cell.data_type == "f":  # openpyxl reads a leading '=' as a formula
                    cell.data_type = "s"
    if escaped:
        print(f"{path}: {escaped} control characters that .xlsx cannot hold were written as escapes (\\x1b ...)")
    return escaped


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
    monitor = RequestMonitor(config.request_timeout, secret=api_key)
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
JSON_START = re.compile(r"[\[{]")
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


def json_values(text: str) -> list:
    """Every top-level JSON object or array in a reply, in order: the whole reply if it is JSON, else each
    one found amid prose (inside ``` fences or not)."""
    text = text.strip()
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    found, decoder, start = [], json.JSONDecoder(), 0
    while (match := JSON_START.search(text, start)) is not None:
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            start = match.start() + 1
            continue
        found.append(value)
        start = end
    return found


def extract_json(text: str):
    """Step 1's list of queries: the whole reply if it is JSON, else the first ``` fenced block that is,
    else the first JSON amid prose; None if there is none."""
    for block in FENCED_BLOCK.findall(text):
        try:
            return json.loads(block)
        except json.JSONDecodeError:
            pass
    values = json_values(text)
    return values[0] if values else None


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
                    detail = monitor.redact(str(error.message))[:200]  # a provider may echo the key
                    raise UserError(FATAL_STATUS_HELP[error.status_code].format(detail=detail))
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


def check_any_succeeded(finished: dict, failed: dict) -> None:
    """If not one request has ever succeeded, the provider was never reached: stop with exit code 2
    instead of writing an empty table."""
    if failed and not finished:
        reasons = ", ".join(f"{count} {reason}" for reason, count in failed.items())
        raise UserError(
            f"no request succeeded ({reasons}); check --base-url and that the provider is up, then run the same "
            f"command again (the journal keeps whatever finishes)."
        )


USAGE_NOTE = (
    "tokens of the replies in the journal; a reply that a killed run received but never journalled is not "
    "counted here, though the provider bills it"
)


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
