"""A SIGKILL in the middle of a session loses no completed event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mechscope.sessions import Session

WRITER = textwrap.dedent("""
    import sys
    from mechscope.sessions import Session

    session = Session.create("crashy")
    seq = 0
    while True:
        seq = session.record_note("note " + "x" * (seq % 5000)).seq
        if seq % 2 == 0:
            session.record_prompt("prompt %d" % seq, None)
        print(seq, flush=True)  # printed only once record() has returned (written and fsynced)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_loses_no_completed_event() -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    confirmed = 0
    try:
        for line in proc.stdout:
            confirmed = int(line)
            if confirmed >= 150:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert confirmed >= 150

    session = Session.open("crashy")
    seqs = [event.seq for event in session]
    assert seqs == list(range(1, len(seqs) + 1))
    assert seqs[-1] >= confirmed  # every event the writer saw confirmed is on disk
    notes = [event for event in session if event.kind == "note"]
    assert notes[-1]["text"].startswith("note ")
    assert len(session.warnings) <= 1  # at most the one line being written when killed

    # the session stays usable: appending after the crash continues the sequence
    next_seq = session.record_note("after the crash").seq
    assert next_seq == seqs[-1] + 1
    assert [e.seq for e in Session.open("crashy")][-1] == next_seq
