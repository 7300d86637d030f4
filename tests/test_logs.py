"""Log lines for the journal, as JSON, or as text; [log] level."""

import io
import json
import os
import tempfile

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial import unittest

from soketify.logs import Observer, make_observer, stdout_is_the_journal
from tests.support import make_config


def event(level=LogLevel.info, text="Hello {who}", **fields):
    return dict({"log_level": level, "log_format": text, "who": "you", "log_time": 1700000000.0,
                 "log_namespace": "soketify.test", "log_system": "-"}, **fields)


class ObserverTests(unittest.TestCase):
    def test_journal_lines_carry_priority_and_no_timestamp(self):
        stream = io.StringIO()
        observer = Observer(stream, journal=True)
        observer(event(LogLevel.warn, "Dropping slow client {id}", id="1.2"))
        observer(event(LogLevel.error, "Boom", log_failure=Failure(ValueError("bad"))))
        lines = stream.getvalue().splitlines()
        self.assertEqual(lines[0], "<4>[soketify.test] Dropping slow client 1.2")
        self.assertTrue(lines[1].startswith("<3>[soketify.test] Boom"))
        self.assertTrue(all(line.startswith("<3>") for line in lines[1:]))  # the traceback too
        self.assertIn("ValueError: bad", stream.getvalue())

    def test_json_lines(self):
        stream = io.StringIO()
        observer = Observer(stream, journal=False)
        observer.configure("json", "info")
        observer(event(LogLevel.info, "Hello {who}", log_system="worker 1"))
        entry = json.loads(stream.getvalue())
        self.assertEqual((entry["level"], entry["message"], entry["system"], entry["namespace"]),
                         ("info", "Hello you", "worker 1", "soketify.test"))

    def test_text_lines_have_a_timestamp_and_the_level_filters(self):
        stream = io.StringIO()
        observer = Observer(stream, journal=False)
        observer.configure("text", "warn")
        observer(event(LogLevel.info))
        observer(event(LogLevel.warn, "Careful"))
        text = stream.getvalue()
        self.assertNotIn("Hello", text)
        self.assertIn("Careful", text)
        self.assertRegex(text, r"^\d{4}-\d\d-\d\dT")

    def test_journal_stream_is_recognised_by_device_and_inode(self):
        with tempfile.TemporaryFile("w") as stream:
            stat = os.fstat(stream.fileno())
            journal = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
            self.assertTrue(stdout_is_the_journal(stream, journal))
            self.assertFalse(stdout_is_the_journal(stream, {"JOURNAL_STREAM": "1:2"}))
            self.assertFalse(stdout_is_the_journal(stream, {}))

    def test_twistd_gets_a_factory_and_config_reads_log(self):
        self.assertIsInstance(make_observer(), Observer)
        config = make_config(log={"format": "json", "level": "debug"})
        self.assertEqual((config.log.format, config.log.level), ("json", "debug"))
