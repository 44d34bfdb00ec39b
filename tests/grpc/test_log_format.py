"""``--log-format json``: one JSON object per line, with time, level, logger, message, and the coding group a
line concerns; set by the variable as well as the flag, in every service (one ``setup_logging``)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

import encoder_service.__main__ as encoder_main
from service_common.logs import JsonFormatter

REPO = Path(__file__).resolve().parents[2]


def test_a_json_line_carries_the_group_and_the_traceback():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test_log_format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.error("call to %s raised", "mnist_cnn", exc_info=True, extra={"group_id": 7, "model": "mnist_cnn"})
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()  # the message's newline and the traceback's stay inside the line
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["logger"] == "test_log_format"
    assert record["message"] == "call to mnist_cnn raised"
    assert record["group_id"] == 7 and record["model"] == "mnist_cnn"
    assert "RuntimeError: boom" in record["exception"]
    assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0


@pytest.mark.timeout(60)
def test_a_service_started_with_the_variable_logs_json_lines():
    env = {**os.environ, "CODEDSERVE_ENCODER_LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "encoder_service", "--address", "127.0.0.1:0"]
    process = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # its first line: "encoder serving on port N" (blocks until written)
    finally:
        process.terminate()
        process.wait(timeout=30)
    record = json.loads(line)
    assert record["level"] == "INFO" and record["logger"] == "encoder_service"
    assert record["message"].startswith("encoder serving on port ")
    assert "group_id" not in record  # only lines about one group carry it


def test_an_unknown_log_format_is_refused_naming_the_variable():
    with pytest.raises(SystemExit, match="CODEDSERVE_ENCODER_LOG_FORMAT='yaml'"):
        encoder_main.parser({"CODEDSERVE_ENCODER_LOG_FORMAT": "yaml"})
