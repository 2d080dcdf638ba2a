"""Unit tests of the Python SDK, run natively: `python3 -m unittest discover
-s guest-sdk/python/tests` (scripts/test runs them)."""

import os
import sys
import unittest
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import kwasm  # noqa: E402
from kwasm import Config, ConfigError, Message, Output, PermanentError, RetryableError  # noqa: E402


def batch(messages):
    """A WIT batch as the host lays it out (columns + one data buffer)."""
    data = bytearray()
    cols = SimpleNamespace(
        topic="orders", partition=3, offsets=[], timestamps=[], key_lengths=[],
        value_lengths=[], header_counts=[], header_lengths=[],
    )

    def push(b):
        if b is None:
            return -1
        data.extend(b)
        return len(b)

    for offset, ts, key, value, headers in messages:
        cols.offsets.append(offset)
        cols.timestamps.append(ts)
        cols.header_counts.append(len(headers))
        for n, v in headers:
            cols.header_lengths += [push(n.encode()), push(v)]
        cols.key_lengths.append(push(key))
        cols.value_lengths.append(push(value))
    cols.data = bytes(data)
    return cols


class BatchBoundary(unittest.TestCase):
    def test_decode_gives_one_message_per_row_with_nulls_and_headers(self):
        msgs = kwasm.decode_batch(batch([
            (10, 1700, b"k1", b"v1", [("a", b"1"), ("b", None)]),
            (11, -1, None, None, []),
        ]))
        self.assertEqual(len(msgs), 2)
        m = msgs[0]
        self.assertEqual((m.topic, m.partition, m.offset, m.timestamp_ms), ("orders", 3, 10, 1700))
        self.assertEqual((m.key, m.value, m.headers), (b"k1", b"v1", [("a", b"1"), ("b", None)]))
        self.assertEqual(m.header("b"), b"")
        self.assertIsNone(m.header("c"))
        t = msgs[1]
        self.assertEqual((t.offset, t.timestamp_ms, t.key, t.value, t.headers), (11, None, None, None, []))

    def test_outcomes_encode_counts_errors_topics_and_data(self):
        def handle(msg):
            if msg.offset == 1:
                return None
            if msg.offset == 2:
                raise RetryableError("busy")
            if msg.offset == 3:
                raise PermanentError("bad")
            return [Output.forward(msg), Output().with_topic("audit").with_key("x").with_value(None)]

        msgs = [Message(value=b"v", key=b"k", offset=o, timestamp_ms=5, headers=[("h", b"1")]) for o in range(4)]
        out = kwasm.run_batch(msgs, handle)
        self.assertEqual(out.record_counts, [2, 0, 0, 0])
        self.assertEqual(out.errors, [(2, True, "busy"), (3, False, "bad")])
        self.assertEqual(out.record_topics, [-1, 0])
        self.assertEqual(out.topics, ["audit"])
        self.assertEqual(out.timestamps, [5, -1])
        self.assertEqual(out.header_counts, [1, 0])
        self.assertEqual(out.header_lengths, [1, 1])
        self.assertEqual(out.key_lengths, [1, 1])
        self.assertEqual(out.value_lengths, [1, -1])
        self.assertEqual(bytes(out.data), b"h1kvx")

    def test_other_exceptions_propagate_so_the_batch_traps(self):
        with self.assertRaises(ZeroDivisionError):
            kwasm.run_batch([Message(value=b"1")], lambda m: 1 / 0)

    def test_wrong_return_type_is_a_type_error(self):
        with self.assertRaisesRegex(TypeError, "returns an Output, None or a list of Output, not str"):
            kwasm.run_batch([Message(value=b"1")], lambda m: "oops")


class Messages(unittest.TestCase):
    def test_text_and_json_errors_are_permanent(self):
        with self.assertRaisesRegex(PermanentError, "^invalid UTF-8: "):
            Message(value=b"\xff").value_str()
        with self.assertRaisesRegex(PermanentError, "^invalid JSON: "):
            Message(value=b"not json").json()
        with self.assertRaisesRegex(PermanentError, "^expected a JSON value, got a null value$"):
            Message().json()
        self.assertEqual(Message(value=b'{"a":[1,{"b":2}]}').json(), {"a": [1, {"b": 2}]})

    def test_output_builders(self):
        o = Output.forward(Message(value="v", headers=[("h", "1"), ("h", "2")]))
        o.with_header("h", "3").add_header("g", b"4")
        self.assertEqual(o.headers, [("h", b"3"), ("g", b"4")])
        self.assertEqual(o.without_header("h").headers, [("g", b"4")])
        self.assertEqual(Output().with_json({"a": "é"}).value, '{"a":"é"}'.encode())


class Configs(unittest.TestCase):
    def test_messages_match_the_rust_sdk(self):
        c = Config([("field", "a"), ("mod", "x")])
        self.assertEqual(c.require("field"), "a")
        with self.assertRaises(ConfigError) as e:
            c.require("equals")
        self.assertEqual(str(e.exception), "missing required config key `equals`")
        with self.assertRaises(ConfigError) as e:
            c.deny_unknown(["field", "equals", "mode"])
        self.assertEqual(str(e.exception), "unknown config key `mod` (known keys: field, equals, mode)")
        self.assertEqual(Config({"l": " a, ,b "}).list("l"), ["a", "b"])

    def test_json_path_and_as_text(self):
        p = kwasm.JsonPath("items.0.qty")
        self.assertEqual(p.get({"items": [{"qty": 3}]}), 3)
        self.assertIs(p.get({"items": []}, kwasm.JsonPath.MISSING), kwasm.JsonPath.MISSING)
        self.assertEqual([kwasm.as_text(v) for v in ("x", 3, True, None, [1, 2])], ["x", "3", "true", "null", "[1,2]"])
        with self.assertRaises(ConfigError) as e:
            kwasm.JsonPath("a..b")
        self.assertEqual(str(e.exception), 'invalid JSON field path "a..b": use dotted names like `user.email`')


class ExportWithoutComponent(unittest.TestCase):
    def test_init_error_is_the_config_message(self):
        class Err(Exception):
            pass

        kwasm._Err = Err
        try:
            def setup(config):
                config.require("x")

            h = kwasm.plugin(lambda m, s: None, init=setup)()
            with self.assertRaises(Err) as e:
                h.init([])
            self.assertEqual(e.exception.args[0], "missing required config key `x`")
        finally:
            kwasm._Err = None

    def test_handle_batch_before_init_traps(self):
        h = kwasm.plugin(lambda m: None)()
        with self.assertRaisesRegex(RuntimeError, "before a successful init"):
            h.handle_batch(batch([]))


if __name__ == "__main__":
    unittest.main()
