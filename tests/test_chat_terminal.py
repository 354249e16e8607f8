"""`visualrwkv chat` on a real pseudo-terminal: Ctrl-C stops the answer and keeps the session, the
session goes on, Ctrl-D leaves cleanly (exit status 0), and the questions land in the history file."""

import os
import pty
import select
import sys
import time

import pytest
import torch

from visualrwkv.model import VisualRWKV, VisualRWKVConfig
from visualrwkv.rwkv.model import RWKVConfig
from visualrwkv.testing import random_rwkv6_state_dict
from visualrwkv.vision.encoders import VisionConfig
from visualrwkv.vision.tiny import TinyEncoderConfig


@pytest.fixture(scope="module")
def chatty_model_dir(tmp_path_factory):
    """Random weights with no bias towards "\\n\\n": answers run on to --max-tokens, long enough to interrupt."""
    torch.manual_seed(1)
    vision = VisionConfig("tiny", tiny=TinyEncoderConfig(image_size=32, patch_size=8, hidden_size=64,
                                                         num_layers=1, num_heads=2))
    model = VisualRWKV(VisualRWKVConfig(rwkv=RWKVConfig(n_embd=64, n_layer=1, vocab_size=65536), vision=vision))
    model.rwkv.load_state_dict(random_rwkv6_state_dict(64, 1, vocab_size=65536, seed=1))
    path = tmp_path_factory.mktemp("chatty") / "chatty"
    model.save_pretrained(path)
    return path


class Terminal:
    """The parent's side of a pseudo-terminal: what the child wrote so far, and waiting for text."""

    def __init__(self, fd):
        self.fd, self.seen = fd, bytearray()

    def pump(self, seconds=0.2) -> None:
        if select.select([self.fd], [], [], seconds)[0]:
            try:
                self.seen += os.read(self.fd, 4096)
            except OSError:  # the child closed the terminal
                pass

    def wait_for(self, wanted: bytes, after: int = 0, timeout=90.0) -> int:
        """Position just after `wanted`, first seen after position `after`."""
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(wanted, after)) < 0:
            assert time.monotonic() < deadline, f"waited for {wanted!r}, got {bytes(self.seen[-500:])!r}"
            self.pump()
        return at + len(wanted)


def test_ctrl_c_stops_the_answer_and_ctrl_d_leaves(chatty_model_dir, tmp_path):
    env = {**os.environ, "VISUALRWKV_CACHE": str(tmp_path / "cache"), "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, on the terminal
        os.execve(sys.executable, [sys.executable, "-m", "visualrwkv", "chat", "--model", str(chatty_model_dir),
                                   "--max-tokens", "1024", "--seed", "1"], env)  # seed 1: both answers run long
    term, status = Terminal(fd), None
    try:
        at = term.wait_for(b">>> ")
        for question in (b"tell me everything", b"and now?"):
            os.write(fd, question + b"\r")
            at = term.wait_for(question + b"\r\n", at)
            deadline = time.monotonic() + 60
            while len(term.seen) - at < 100:  # the answer is streaming
                assert time.monotonic() < deadline, bytes(term.seen)
                term.pump()
            os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
            at = term.wait_for(b"[answer stopped]", at)
            at = term.wait_for(b">>> ", at)  # the session goes on
        os.write(fd, b"\x04")  # Ctrl-D at the prompt
        deadline = time.monotonic() + 60
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            assert time.monotonic() < deadline, bytes(term.seen)
            term.pump()
        status = done[1]
    finally:
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(term.seen)
    assert b"Traceback" not in term.seen and b"KeyboardInterrupt" not in term.seen
    history = (tmp_path / "cache" / "chat_history").read_text().splitlines()
    assert history[-2:] == ["tell me everything", "and now?"]
