"""Write kwasm plugins in Python: Kafka message handlers that run as
WebAssembly components inside the kwasm host.

A plugin is one plain function, called once per message, in order per
partition. ``plugin`` turns it into the component's export; the columnar
batch of the WIT contract (``guest-sdk/wit/0.1.0``) never reaches your code,
exactly as with the Rust SDK (``kwasm_guest``)::

    from kwasm import Config, Message, Output, plugin

    def setup(config: Config) -> str:
        config.deny_unknown(["suffix"])
        return config.get("suffix", "!")

    def handle(msg: Message, suffix: str) -> Output:
        return Output.forward(msg).with_value(msg.value_str().upper() + suffix)

    Handler = plugin(handle, init=setup)   # componentize-py exports `Handler`

A handler returns an ``Output``, ``None`` (drops the message) or a list of
outputs. ``RetryableError`` is retried by the host with backoff,
``PermanentError`` sends the message to the dead-letter topic. Any other
exception is a bug: the batch traps, as a Rust panic does, and the host's trap
policy applies (the instance is replaced).

``init`` runs once per instance with the pipeline's config; raising
``ConfigError`` (or any exception) rejects the config with its text.

Globals are a cache, not state: the host may drop an instance between any two
batches and build a new one (calling ``init`` again).

Build: ``componentize-py -d WIT -w plugin componentize app -p . -p SDK
--stub-wasi -o plugin.wasm`` (``kwasm new --lang python`` prints the exact
command). Outside a component (plain ``python3``), log lines go to stderr, so
handlers unit-test natively.
"""

from __future__ import annotations

import json as _json
import sys
from typing import Any, Callable, Iterable, Optional, Sequence, Union

__all__ = [
    "Config",
    "ConfigError",
    "JsonPath",
    "Message",
    "Output",
    "PermanentError",
    "RetryableError",
    "as_text",
    "debug",
    "error",
    "info",
    "plugin",
    "trace",
    "warn",
]

try:  # Inside the component: the WIT bindings componentize-py generates.
    from wit_world.imports import log as _wit_log  # type: ignore
    from wit_world.imports import types as _wit_types  # type: ignore
    from componentize_py_types import Err as _Err  # type: ignore
except ImportError:  # Native unit tests.
    _wit_log = None
    _wit_types = None
    _Err = None


# --- errors -------------------------------------------------------------------


class RetryableError(Exception):
    """A transient failure (a dependency was busy, say): the host retries the
    message with backoff and dead-letters it once the retry policy is spent."""


class PermanentError(Exception):
    """The message can never be handled (it does not parse, say): the host
    sends it to the dead-letter topic at once and moves on."""


class ConfigError(ValueError):
    """The pipeline's plugin config is wrong; raised from ``init``, its text
    is shown to the operator and the deploy fails."""


# --- config -------------------------------------------------------------------


class Config:
    """The plugin's configuration: string keys and values set on the pipeline.
    Same methods and messages as the Rust SDK's ``Config``."""

    def __init__(self, entries: Union[dict, Iterable] = ()):
        self._entries = dict(entries)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key``, else ``default``."""
        return self._entries.get(key, default)

    def require(self, key: str) -> str:
        """The value of ``key``; ``ConfigError`` naming it when unset."""
        if key not in self._entries:
            raise ConfigError(f"missing required config key `{key}`")
        return self._entries[key]

    def list(self, key: str) -> list:
        """A comma-separated list under ``key``, trimmed, empty items skipped."""
        return [s.strip() for s in self._entries.get(key, "").split(",") if s.strip()]

    def items(self):
        """Every key and value, sorted by key."""
        return sorted(self._entries.items())

    def deny_unknown(self, known: Sequence[str]) -> None:
        """Rejects keys outside ``known``: a typo in a pipeline's plugin config
        should fail the deploy, not be silently ignored."""
        for key in sorted(self._entries):
            if key not in known:
                raise ConfigError(
                    f"unknown config key `{key}` (known keys: {', '.join(known)})"
                )


# --- messages -----------------------------------------------------------------


class Message:
    """One input message. ``key``/``value`` are ``bytes`` or ``None`` (a null
    key, a tombstone); ``headers`` is a list of ``(name, bytes or None)`` in
    order, names may repeat; ``timestamp_ms`` is ``None`` when the broker
    gave none."""

    __slots__ = ("topic", "partition", "offset", "timestamp_ms", "key", "value", "headers")

    def __init__(
        self,
        value: Optional[bytes] = None,
        key: Optional[bytes] = None,
        headers: Sequence = (),
        topic: str = "",
        partition: int = 0,
        offset: int = 0,
        timestamp_ms: Optional[int] = None,
    ):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.key = _as_bytes(key)
        self.value = _as_bytes(value)
        self.headers = [(n, _as_bytes(v)) for n, v in headers]

    def key_str(self) -> Optional[str]:
        """The key as text; ``None`` for a null key, ``PermanentError`` when it
        is not UTF-8."""
        return None if self.key is None else _utf8(self.key)

    def value_str(self) -> str:
        """The value as text (a null value reads as ``""``); ``PermanentError``
        when it is not UTF-8."""
        return _utf8(self.value or b"")

    def json(self) -> Any:
        """The value parsed as JSON; ``PermanentError`` when it does not parse
        (retrying cannot make it parse)."""
        if self.value is None:
            raise PermanentError("expected a JSON value, got a null value")
        try:
            return _json.loads(self.value)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise PermanentError(f"invalid JSON: {e}") from None

    def header(self, name: str) -> Optional[bytes]:
        """The value of the first header called ``name`` (a null value reads
        as ``b""``), or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v or b""
        return None


class Output:
    """One output record. Built with ``Output()`` (empty, for the pipeline's
    output topic) or ``Output.forward(msg)``; the ``with_*`` methods change it
    and return it, so calls chain."""

    __slots__ = ("topic", "key", "value", "headers", "timestamp_ms")

    def __init__(self):
        self.topic: Optional[str] = None
        self.key: Optional[bytes] = None
        self.value: Optional[bytes] = None
        self.headers: list = []
        self.timestamp_ms: Optional[int] = None

    @classmethod
    def forward(cls, msg: Message) -> "Output":
        """The input message as it is: same key, value, headers and timestamp,
        for the pipeline's output topic."""
        out = cls()
        out.key, out.value = msg.key, msg.value
        out.headers = list(msg.headers)
        out.timestamp_ms = msg.timestamp_ms
        return out

    def with_topic(self, topic: str) -> "Output":
        """Sends this record to ``topic`` instead of the pipeline's output
        topic (it must be one the pipeline declares)."""
        self.topic = topic
        return self

    def with_key(self, key: Union[str, bytes, None]) -> "Output":
        """Sets the key (``None``: a null key)."""
        self.key = _as_bytes(key)
        return self

    def with_value(self, value: Union[str, bytes, None]) -> "Output":
        """Sets the value (``None``: a tombstone)."""
        self.value = _as_bytes(value)
        return self

    def with_json(self, value: Any) -> "Output":
        """Sets the value to ``value`` serialized as compact JSON."""
        self.value = _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return self

    def with_header(self, name: str, value: Union[str, bytes, None]) -> "Output":
        """Replaces every header called ``name`` with one ``name: value``."""
        self.headers = [(n, v) for n, v in self.headers if n != name]
        self.headers.append((name, _as_bytes(value)))
        return self

    def add_header(self, name: str, value: Union[str, bytes, None]) -> "Output":
        """Appends a header, keeping any others of the same name."""
        self.headers.append((name, _as_bytes(value)))
        return self

    def without_header(self, name: str) -> "Output":
        """Removes every header called ``name``."""
        self.headers = [(n, v) for n, v in self.headers if n != name]
        return self

    def with_timestamp_ms(self, timestamp_ms: Optional[int]) -> "Output":
        """Sets the timestamp (ms since the Unix epoch; ``None``: the producer
        stamps it)."""
        self.timestamp_ms = timestamp_ms
        return self

    def header(self, name: str) -> Optional[bytes]:
        """The value of the first header called ``name``, or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v or b""
        return None


def _as_bytes(v: Union[str, bytes, bytearray, memoryview, None]) -> Optional[bytes]:
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    return bytes(v)


def _utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PermanentError(f"invalid UTF-8: {e}") from None


# --- JSON helpers ---------------------------------------------------------------


class JsonPath:
    """A dotted path into a JSON document (``user.email``, ``items.0.sku``):
    the form operators write in pipeline configs. A numeric segment indexes
    an array."""

    def __init__(self, path: str):
        segments = path.split(".")
        if not path or any(not s for s in segments):
            raise ConfigError(
                f"invalid JSON field path {_json.dumps(path)}: use dotted names like `user.email`"
            )
        self.segments = segments

    _MISSING = object()

    def get(self, doc: Any, default: Any = None) -> Any:
        """The value at this path, else ``default`` (``JsonPath.MISSING`` tells
        a missing field from a JSON null)."""
        node = doc
        for seg in self.segments:
            if isinstance(node, dict) and seg in node:
                node = node[seg]
            elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
                node = node[int(seg)]
            else:
                return default
        return node

    def __str__(self) -> str:
        return ".".join(self.segments)


JsonPath.MISSING = JsonPath._MISSING


def as_text(value: Any) -> str:
    """A JSON value as plain text for comparisons with configured strings:
    strings without quotes, everything else as compact JSON (``42``,
    ``true``, ``null``), as the Rust SDK's ``json::as_text``."""
    if isinstance(value, str):
        return value
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- logging --------------------------------------------------------------------

_current_offset: Optional[int] = None
_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


def _log(level: int, message: str) -> None:
    if _wit_log is not None:
        _wit_log.log(_wit_log.Level(level), _current_offset, message)
    elif _current_offset is None:
        print(f"[{_LEVELS[level]}] {message}", file=sys.stderr)
    else:
        print(f"[{_LEVELS[level]} offset={_current_offset}] {message}", file=sys.stderr)


def trace(message: str) -> None:
    """Logs at trace level; the host adds plugin, topic, partition, offset."""
    _log(0, message)


def debug(message: str) -> None:
    """Logs at debug level."""
    _log(1, message)


def info(message: str) -> None:
    """Logs at info level."""
    _log(2, message)


def warn(message: str) -> None:
    """Logs at warn level."""
    _log(3, message)


def error(message: str) -> None:
    """Logs at error level."""
    _log(4, message)


# --- the batch boundary -----------------------------------------------------------


def decode_batch(batch) -> list:
    """The messages of a WIT ``batch`` (columns plus one data buffer), one
    ``Message`` each. The host built the columns, so they are consistent."""
    data = batch.data
    pos = 0
    hl = batch.header_lengths
    h = 0
    messages = []
    topic, partition = batch.topic, batch.partition

    for i in range(len(batch.offsets)):
        headers = []
        for _ in range(batch.header_counts[i]):
            name_len, value_len = hl[h], hl[h + 1]
            h += 2
            name = data[pos : pos + name_len].decode("utf-8", "replace")
            pos += name_len
            if value_len < 0:
                value = None
            else:
                value = data[pos : pos + value_len]
                pos += value_len
            headers.append((name, value))
        klen, vlen = batch.key_lengths[i], batch.value_lengths[i]
        key = value = None
        if klen >= 0:
            key = data[pos : pos + klen]
            pos += klen
        if vlen >= 0:
            value = data[pos : pos + vlen]
            pos += vlen
        msg = Message.__new__(Message)
        msg.topic, msg.partition, msg.offset = topic, partition, batch.offsets[i]
        ts = batch.timestamps[i]
        msg.timestamp_ms = ts if ts >= 0 else None
        msg.key, msg.value, msg.headers = key, value, headers
        messages.append(msg)
    return messages


class _ResultEncoder:
    """Accumulates the columns of a WIT ``batch-result``."""

    def __init__(self):
        self.record_counts = []
        self.errors = []  # (index, retryable, message)
        self.record_topics = []
        self.timestamps = []
        self.key_lengths = []
        self.value_lengths = []
        self.header_counts = []
        self.header_lengths = []
        self.topics = []
        self.data = bytearray()

    def _push(self, b: Optional[bytes]) -> int:
        if b is None:
            return -1
        self.data += b
        return len(b)

    def encode(self, outputs) -> None:
        if outputs is None:
            outputs = ()
        elif isinstance(outputs, Output):
            outputs = (outputs,)
        count = 0
        for o in outputs:
            if not isinstance(o, Output):
                raise TypeError(
                    f"a handler returns an Output, None or a list of Output, not {type(o).__name__}"
                )
            self.header_counts.append(len(o.headers))
            for name, value in o.headers:
                self.header_lengths.append(self._push(name.encode()))
                self.header_lengths.append(self._push(_as_bytes(value)))
            self.key_lengths.append(self._push(o.key))
            self.value_lengths.append(self._push(o.value))
            self.timestamps.append(-1 if o.timestamp_ms is None else o.timestamp_ms)
            if o.topic is None:
                self.record_topics.append(-1)
            else:
                if o.topic not in self.topics:
                    self.topics.append(o.topic)
                self.record_topics.append(self.topics.index(o.topic))
            count += 1
        self.record_counts.append(count)

    def fail(self, index: int, retryable: bool, message: str) -> None:
        self.record_counts.append(0)
        self.errors.append((index, retryable, message))


def run_batch(messages: list, handle: Callable[[Message], Any]) -> _ResultEncoder:
    """Calls ``handle`` on each message in order and encodes the outcomes;
    what ``handle-batch`` does, minus the WIT types (so it tests natively)."""
    global _current_offset
    out = _ResultEncoder()
    try:
        for index, msg in enumerate(messages):
            _current_offset = msg.offset
            try:
                outputs = handle(msg)
            except RetryableError as e:
                out.fail(index, True, str(e))
                continue
            except PermanentError as e:
                out.fail(index, False, str(e))
                continue
            out.encode(outputs)
    finally:
        _current_offset = None
    return out


def _to_wit(out: _ResultEncoder):
    t = _wit_types
    return t.BatchResult(
        record_counts=out.record_counts,
        errors=[
            t.MessageError(
                index=i,
                kind=t.ErrorKind.RETRYABLE if retryable else t.ErrorKind.PERMANENT,
                message=m,
            )
            for i, retryable, m in out.errors
        ],
        record_topics=out.record_topics,
        timestamps=out.timestamps,
        key_lengths=out.key_lengths,
        value_lengths=out.value_lengths,
        header_counts=out.header_counts,
        header_lengths=out.header_lengths,
        topics=out.topics,
        data=bytes(out.data),
    )


_UNSET = object()


def plugin(handle: Callable, init: Optional[Callable[[Config], Any]] = None):
    """The component's ``handler`` export for ``handle``. Assign it to
    ``Handler`` in the module given to ``componentize-py componentize``.

    With ``init``, ``handle(msg, settings)`` receives what ``init(config)``
    returned; without, ``handle(msg)``."""
    state = {"settings": _UNSET}

    class Handler:
        def init(self, config) -> None:
            if init is None:  # like the Rust SDK: any config is accepted
                state["settings"] = None
                return
            try:
                state["settings"] = init(Config(config))
            except Exception as e:  # any exception rejects the config
                raise _Err(str(e)) from None

        def handle_batch(self, batch):
            settings = state["settings"]
            if settings is _UNSET:
                # The host always calls init first; if not, trapping is the
                # only honest answer (every message would be wrong).
                raise RuntimeError("kwasm: handle-batch called before a successful init")
            if init is None:
                out = run_batch(decode_batch(batch), handle)
            else:
                out = run_batch(decode_batch(batch), lambda m: handle(m, settings))
            return _to_wit(out)

    Handler.__doc__ = f"kwasm handler export for {getattr(handle, '__name__', 'handle')}"
    return Handler
